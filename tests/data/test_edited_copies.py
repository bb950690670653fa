"""Edited copies (turned, flipped, cropped centred or anywhere, padded, captioned, rotated,
and two of these at once) are found with the edit named; neighbouring MRI slices are not;
similarity groups do not chain strangers."""

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy.ndimage import gaussian_filter
from test_dedup import run_dedup, use_dataset

import split
from medimg.data.catalog import similarity_clusters, similarity_report
from medimg.data.contact import MARGIN, PAD, SHEET_BG
from medimg.data.perceptual import phash
from medimg.data.synthetic_edits import ALL_EDITS
from sample import mni152_path, to_uint8


def put(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def head(seed: int, size: int = 160) -> np.ndarray:
    """An MRI-like RGB image: textured ellipse on black."""
    rng = np.random.default_rng(seed)
    field = sum(gaussian_filter(rng.normal(0, 1, (size, size)), s) * s for s in (1, 2, 4, 8))
    field = (field - field.min()) / (field.max() - field.min()) * 200 + 40
    yy, xx = np.mgrid[:size, :size]
    inside = ((xx - size / 2) / (size * 0.38)) ** 2 + ((yy - size / 2) / (size * 0.45)) ** 2
    return np.stack([np.where(inside <= 1, field, 0).astype(np.uint8)] * 3, axis=2)


# What the stage must call each edit (the copy seen from the original), as a regex.
NAMES = {
    "rot90": "^rot90$", "rot180": "^rot180$", "rot270": "^rot270$", "hflip": "^hflip$",
    "vflip": "^vflip$", "transpose": "^transpose$", "transverse": "^transverse$",
    "crop 90%": r"^crop 0\.(8[7-9]|9[0-3])$", "crop 80%": r"^crop 0\.(7[7-9]|8[0-3])$",
    "asymmetric border": "^pad$", "text caption": "^none$",
    "rotate 3-10 degrees": r"^rotate -?([3-9]|1[0-2])$",
    "resize 50%": "^none$", "resize 75%": "^none$", "JPEG q40": "^none$",
    "gamma 0.8": "^none$",
    "crop 70% anywhere": r"^crop 0\.(6[7-9]|7[0-3])$",
    "hflip + crop 70-95% anywhere": r"^hflip crop 0\.([7-8]\d|9[0-5])$",
    "rot270 + crop 70-95% anywhere": r"^rot270 crop 0\.([7-8]\d|9[0-5])$",
    "crop 70-95% anywhere + brightness +20%": r"^crop 0\.([7-8]\d|9[0-5])$",
    "rotate 3-10 degrees + text caption": r"^rotate -?([3-9]|1[0-2])$",
}


@pytest.mark.parametrize("edit", list(NAMES))
def test_each_edit_is_found_with_its_name(tmp_path, monkeypatch, edit) -> None:
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"])
    original = Image.fromarray(head(1))
    put(raw / "a/0_original.png", original)
    put(raw / "a/1_copy.png", ALL_EDITS[edit](original, np.random.default_rng(0)))
    for seed in (2, 3):
        put(raw / f"b/other{seed}.png", Image.fromarray(head(seed)))
    counts, tables = run_dedup()
    removed = tables["duplicates"].set_index("path")
    assert counts["near_duplicates"] == 1 and counts["kept"] == 3
    assert counts["found"] == sum(v for k, v in counts.items() if k != "found")
    copy, kept = (("a/0_original.png", "a/1_copy.png") if edit == "asymmetric border"
                  else ("a/1_copy.png", "a/0_original.png"))  # the larger image is kept
    assert removed.loc[copy, "representative"] == kept
    assert re.match(NAMES[edit], removed.loc[copy, "edit"]), removed.loc[copy, "edit"]
    dedup = yaml.safe_load((tmp_path / "params.yaml").read_text())["dedup"]
    confirmed = dedup["crop_correlation" if "anywhere" in edit else "edit_correlation"]
    assert float(removed.loc[copy, "correlation"]) >= confirmed


def test_a_turn_is_named_from_the_kept_image(tmp_path, monkeypatch) -> None:
    # rot90 of the kept image is what the removed copy shows; a larger copy turns it round.
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"])
    original = Image.fromarray(head(4))
    put(raw / "a/copy.png", original.transpose(Image.Transpose.ROTATE_90))
    put(raw / "a/larger.png", original.resize((200, 200)))
    put(raw / "b/other.png", Image.fromarray(head(5)))
    put(raw / "b/another.png", Image.fromarray(head(6)))
    _, tables = run_dedup()
    removed = tables["duplicates"].set_index("path")
    assert removed.loc["a/copy.png", "representative"] == "a/larger.png"
    assert removed.loc["a/copy.png", "edit"] == "rot90"


def test_a_rotation_is_named_with_its_sign(tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"])
    original = Image.fromarray(head(7))
    put(raw / "a/0_original.png", original)
    put(raw / "a/1_left.png", original.rotate(8, resample=Image.Resampling.BILINEAR))
    put(raw / "a/2_right.png", original.rotate(-8, resample=Image.Resampling.BILINEAR))
    put(raw / "b/other.png", Image.fromarray(head(8)))
    _, tables = run_dedup()
    edit = tables["duplicates"].set_index("path")["edit"]
    left, right = (int(edit[name].split()[-1]) for name in ("a/1_left.png", "a/2_right.png"))
    assert 6 <= left <= 10 and -10 <= right <= -6  # counter-clockwise is positive


def mni_slices(first: int, count: int) -> list[np.ndarray]:
    """Neighbouring 1 mm axial slices of the packaged MNI template, as RGB."""
    volume = to_uint8(np.asarray(nib.load(mni152_path()).dataobj))
    return [np.stack([np.ascontiguousarray(volume[:, :, z].T[::-1])] * 3, axis=2)
            for z in range(first, first + count)]


@pytest.mark.parametrize("first", [70, 136])  # mid-brain; near the top of the head, where
# each slice is a little smaller than the next, as a crop would show it
def test_neighbouring_slices_are_kept_but_share_a_split_group(tmp_path, monkeypatch,
                                                              first) -> None:
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"])
    for i, pixels in enumerate(mni_slices(first, 6)):
        put(raw / f"a/slice{i}.png", Image.fromarray(pixels))
    put(raw / "b/other.png", Image.fromarray(head(9)))
    put(raw / "b/another.png", Image.fromarray(head(10)))
    counts, tables = run_dedup()
    assert counts["kept"] == 8 and counts["near_duplicates"] == 0
    groups = tables["catalog"].set_index("path")["group"]
    assert groups[[f"a/slice{i}.png" for i in range(6)]].nunique() < 6
    similarity = json.loads(Path("metrics/report/dedup.json").read_text())["similarity"]
    assert similarity["cross_class"] == 0 and similarity["images"] >= 2


def chain(count: int, seed: int = 0) -> np.ndarray:
    """Thumbnails where each shares half its detail with the next and nothing with the
    others: a chain of strangers."""
    rng = np.random.default_rng(seed)
    noise = [rng.normal(0, 1, (64, 64)) for _ in range(count + 1)]
    links = [noise[i] + noise[i + 1] for i in range(count)]
    return np.stack([np.clip(np.rint(128 + 25 * x), 0, 255).astype(np.uint8) for x in links])


def test_similarity_groups_do_not_chain_strangers() -> None:
    thumbs = chain(8)
    hashes = np.array([phash(t) for t in thumbs], dtype=np.uint64)
    linked = similarity_clusters(hashes, thumbs, 64, 0.3, min_linkage=0.3)
    sizes = np.unique(linked, return_counts=True)[1]
    assert sizes.max() <= 3  # a member shares nothing with the group's far end
    for cluster in np.unique(linked):  # and every group is a run of neighbours
        members = np.flatnonzero(linked == cluster)
        assert np.all(np.diff(members) == 1)
    single = similarity_clusters(hashes, thumbs, 64, 0.3, min_linkage=-1.0)
    assert len(np.unique(single)) == 1  # one neighbour is enough for single linkage


def test_similarity_report_counts_groups_spanning_classes() -> None:
    kept = pd.DataFrame({
        "group": ["g1", "g1", "g2", "g2", "g2", "g3", "x"],
        "class": ["a", "b", "a", "a", "a", "b", "a"],
        "group_source": ["similarity"] * 5 + ["image", "image"]})
    report = similarity_report(kept)
    assert report["groups"] == 2 and report["images"] == 5 and report["largest"] == 3
    assert report["cross_class"] == 1
    assert report["sizes"] == {"2": 1, "3-5": 1, "6-10": 0, "11-20": 0, "21+": 0}


def test_dedup_and_split_write_contact_sheets(tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"])
    original = Image.fromarray(head(11))
    put(raw / "a/original.png", original)
    put(raw / "a/flipped.png", original.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    (raw / "a/exact.png").write_bytes((raw / "a/original.png").read_bytes())
    put(raw / "a/conflict.png", Image.fromarray(head(12)))
    put(raw / "b/conflict.png", Image.fromarray(head(12)))
    for i, pixels in enumerate(mni_slices(80, 3)):
        put(raw / f"a/slice{i}.png", Image.fromarray(pixels))
    for seed in range(13, 23):
        put(raw / f"{'ab'[seed % 2]}/x{seed}.png", Image.fromarray(head(seed)))
    for i, pixels in enumerate(mni_slices(40, 60)[::6]):  # alike, but not one group
        put(raw / f"{'ab'[i % 2]}/far{i}.png", Image.fromarray(pixels))
    run_dedup()
    sheets = sorted(p.name for p in Path("plots/dedup").iterdir())
    assert sheets == ["conflicts_001.jpg", "duplicates_001.jpg", "similarity_001.jpg"]
    with Image.open("plots/dedup/duplicates_001.jpg") as sheet:
        page = np.asarray(sheet.convert("RGB")).astype(int)
    one_pair = MARGIN + PAD + 2 * (256 + PAD)  # one block of two tiles, at the left
    assert page.shape[0] > 256
    assert (np.abs(page[:, one_pair + 8:] - SHEET_BG) <= 8).all()  # the flip; not the exact
    split.main()
    assert len(pd.read_csv("data/split/closest_pairs.csv")) > 0
    assert [p.name for p in Path("plots/split").iterdir()] == ["closest_pairs_001.jpg"]


def test_no_review_leaves_empty_sheet_folders(tmp_path, monkeypatch) -> None:
    # DVC needs its declared plot folders; with review_limit 0 they exist but hold nothing,
    # and sheets from an earlier run are gone.
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"])
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["dedup"]["review_limit"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    original = Image.fromarray(head(30))
    put(raw / "a/original.png", original)
    put(raw / "a/flipped.png", original.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    for seed in range(31, 45):  # enough of each class to fill train, val and test
        put(raw / f"{'ab'[seed % 2]}/x{seed}.png", Image.fromarray(head(seed)))
    put(Path("plots/dedup/duplicates_001.jpg"), original)  # stale, from an earlier run
    counts, _ = run_dedup()
    split.main()
    assert counts["near_duplicates"] == 1
    assert list(Path("plots/dedup").iterdir()) == []
    assert list(Path("plots/split").iterdir()) == []
