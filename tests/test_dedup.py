import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

import dedup
from conftest import REPO, noise_image, save
from medimg.catalog import DatasetError, assign_groups, walk_dataset


def use_dataset(tmp_path: Path, monkeypatch, classes: list[str], **data) -> Path:
    """Run stages from tmp_path with params pointing at tmp_path/raw."""
    with (REPO / "params.yaml").open() as handle:
        params = yaml.safe_load(handle)
    params["classes"] = classes
    params["data"] = {"raw_dir": "raw", "groups_file": None, "group_regex": None, **data}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "raw"


def run_dedup() -> tuple[dict, dict[str, pd.DataFrame]]:
    dedup.main()
    tables = {name: pd.read_csv(f"data/dedup/{name}.csv", dtype=str, keep_default_na=False)
              for name in ("catalog", "duplicates", "rejects", "ignored")}
    return json.loads(Path("metrics/dedup.json").read_text()), tables


def test_exact_pixel_and_conflict_duplicates(tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"], group_regex=r"^\w/(p\d)_")
    save(raw / "a/p1_orig.png", noise_image(1))
    (raw / "a/p2_copy.png").write_bytes((raw / "a/p1_orig.png").read_bytes())
    save(raw / "a/p3_same_pixels.bmp", noise_image(1))
    save(raw / "a/p4_other.png", noise_image(2))
    save(raw / "b/p5_b.png", noise_image(3))
    save(raw / "a/p6_conflict.png", noise_image(4))
    save(raw / "b/p7_conflict.png", noise_image(4))

    counts, tables = run_dedup()

    assert counts == {"found": 7, "kept": 3, "exact_duplicates": 1, "pixel_duplicates": 1,
                      "conflicts": 2, "rejected": 0, "ignored": 0}
    catalog = tables["catalog"].set_index("path")
    assert sorted(catalog.index) == ["a/p1_orig.png", "a/p4_other.png", "b/p5_b.png"]
    removed = tables["duplicates"].set_index("path")
    assert removed.loc["a/p2_copy.png", "match"] == "exact"
    assert removed.loc["a/p3_same_pixels.bmp", "match"] == "pixel"
    assert removed.loc["a/p3_same_pixels.bmp", "representative"] == "a/p1_orig.png"
    assert set(removed.index[removed["match"] == "conflict"]) == {
        "a/p6_conflict.png", "b/p7_conflict.png"}
    # The copies' groups are merged into the kept image's group.
    assert catalog.loc["a/p1_orig.png", "group"] == "re:p1"
    assert catalog.loc["a/p4_other.png", "group"] == "re:p4"


def test_representative_is_the_largest_then_first_path(tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"])
    pixels = noise_image(5, size=(64, 64))
    save(raw / "a/x_small.png", pixels[::2, ::2])
    save(raw / "a/z_large.png", pixels)
    save(raw / "a/y_large_copy.bmp", pixels)
    save(raw / "b/other.png", noise_image(6))
    counts, tables = run_dedup()
    assert tables["catalog"]["path"].tolist() == ["a/x_small.png", "a/y_large_copy.bmp",
                                                  "b/other.png"]
    assert counts["pixel_duplicates"] == 1


def test_broken_hidden_and_stray_files_are_accounted_for(tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"])
    save(raw / "b/good.png", noise_image(5))
    save(raw / "a/good.png", noise_image(6))
    save(raw / "a/nested/deeper.jpg", noise_image(7), quality=95)
    save(raw / "a/tiny.png", noise_image(8, size=(8, 8)))
    (raw / "a/empty.png").write_bytes(b"")
    (raw / "a/text.jpg").write_text("not an image")
    (raw / "a/notes.txt").write_text("notes")
    (raw / "a/.DS_Store").write_bytes(b"\0")
    (raw / "a/Thumbs.db").write_bytes(b"\0")
    (raw / "a/._good.png").write_bytes(b"\0")
    (raw / "README.md").write_text("about")

    counts, tables = run_dedup()

    assert counts["found"] == 11
    assert counts["kept"] == 3 and counts["rejected"] == 3 and counts["ignored"] == 5
    assert counts["found"] == sum(v for k, v in counts.items() if k != "found")
    reasons = dict(zip(tables["rejects"]["path"], tables["rejects"]["reason"], strict=True))
    assert reasons["a/empty.png"] == "empty file"
    assert reasons["a/text.jpg"] == "not a recognised image"
    assert reasons["a/tiny.png"].startswith("smaller than min_side")
    ignored = dict(zip(tables["ignored"]["path"], tables["ignored"]["reason"], strict=True))
    assert ignored["a/notes.txt"] == "not an image file type"
    assert ignored["README.md"] == "outside any class folder"
    assert ignored["a/Thumbs.db"] == ignored["a/._good.png"] == "hidden or OS file"


def test_unknown_missing_or_empty_dataset_stops_with_a_message(tmp_path) -> None:
    raw = tmp_path / "raw"
    with pytest.raises(DatasetError, match="does not exist"):
        walk_dataset(raw, ["a", "b"])
    save(raw / "a/x.png", noise_image(9))
    with pytest.raises(DatasetError, match=r"\['b'\] from params 'classes' not found"):
        walk_dataset(raw, ["a", "b"])
    (raw / "b").mkdir()
    (raw / "c").mkdir()
    with pytest.raises(DatasetError, match=r"\['c'\] not listed"):
        walk_dataset(raw, ["a", "b"])
    os.rmdir(raw / "c")
    (raw / "a/x.png").unlink()
    with pytest.raises(DatasetError, match="no image files"):
        walk_dataset(raw, ["a", "b"])


def test_groups_come_from_metadata_then_regex_then_the_image() -> None:
    paths = pd.Series(["a/10_idx5_x1.png", "a/11_idx5_x2.png", "a/loose.png"])
    table = pd.DataFrame({"path": ["a/11_idx5_x2.png"], "group": ["slide-7"]})
    group, source = assign_groups(paths, table, r"(\d+)_idx5")
    assert group.tolist() == ["re:10", "meta:slide-7", "a/loose.png"]
    assert source.tolist() == ["regex", "metadata", "image"]


def test_jpeg_reencoding_is_not_an_exact_or_pixel_duplicate(tmp_path, monkeypatch) -> None:
    # Lossy copies need the near-duplicate level; exact and pixel hashes must not merge them.
    raw = use_dataset(tmp_path, monkeypatch, ["a", "b"])
    save(raw / "b/other.png", noise_image(6))
    smooth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    save(raw / "a/orig.png", np.stack([smooth] * 3, axis=2))
    Image.open(raw / "a/orig.png").save(raw / "a/copy.jpg", quality=95)
    counts, _ = run_dedup()
    assert counts["kept"] == 3
