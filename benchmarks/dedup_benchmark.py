"""Benchmark of the dedup stage; writes its figures to benchmarks/results/dedup.json.

    python -m benchmarks.dedup_benchmark [--mri ../shared/datasets/brain-tumor-mri]
        [--sheets FOLDER]

Measures, in one run on this machine: the whole dedup stage (process start included) on
the Brain Tumor MRI set beside the stage as it was before crops anywhere were searched
(commit BASELINE, best of three alternating runs each) and on 20,000 generated small
PNGs, each beside a plain single-process MD5 loop over the same files; the removals that
this code adds on the MRI set, to be checked by eye (with --sheets, the contact sheets of
both runs are copied there); how many look-alike neighbouring files share a similarity
group (`benchmarks/neighbour_slices.py`), now and before; seeded edited copies of MRI
images, one and two edits at once, planted among the real ones
(medimg/data/synthetic_edits.py), and per edit how many were removed as copies of their
own original and how many at least share its split group; the near-duplicate index on
300,000 random 64-bit hashes, the view index and the local-feature index for 300,000
images, each with planted pairs that must all be found; and the split report of the MRI
set with its own Testing folder kept (split.respect_existing).

The planted copies use seed PLANT_SEED; the thresholds were set on seed 0 and on the
real set's own pairs, so the figures reported here are on copies they never saw.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from benchmarks.neighbour_slices import neighbour_figures, neighbour_pairs, newly_joined_pairs
from medimg.data.catalog import similarity_report
from medimg.data.contact import Tile, write_sheets
from medimg.data.features import MIN_VOTES, indexed_candidates
from medimg.data.perceptual import near_pairs, near_pairs_between
from medimg.data.synthetic_edits import ALL_EDITS, TWO_EDITS
from medimg.docs import results_file

REPO = Path(__file__).resolve().parents[1]

MRI_CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
BASELINE = "dbba46f"  # main before crops anywhere and two edits at once were searched
PLANT_SEED = 1  # the thresholds were set on seed 0


def md5_loop(files: list[Path]) -> float:
    """Images per second of the original study's de-duplication: MD5 of the bytes."""
    start = time.perf_counter()
    for path in files:
        with path.open("rb") as handle:
            hashlib.md5(handle.read()).hexdigest()
    return len(files) / (time.perf_counter() - start)


@dataclass
class StageRun:
    seconds: float
    metrics: dict
    duplicates: pd.DataFrame
    catalog: pd.DataFrame
    thumbs: np.ndarray


def run_stages(raw_dir: Path, classes: list[str], class_level: int, stages: list[str],
               respect_existing: str | None = None, code: Path = REPO,
               sheets: Path | None = None) -> StageRun:
    """Run the stage scripts of `code` on raw_dir in a scratch folder: wall time, the last
    stage's full report (metrics/report/), dedup's tables and thumbnails (and its contact
    sheets copied to `sheets`)."""
    with (code / "params.yaml").open() as handle:
        params = yaml.safe_load(handle)
    params["classes"] = classes
    params["data"] = {"raw_dir": str(raw_dir), "class_level": class_level,
                      "groups_file": None, "group_regex": None}
    params["split"]["respect_existing"] = respect_existing
    environment = {**os.environ, "PYTHONPATH": str(code)}  # `code`'s own medimg package
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "params.yaml").write_text(yaml.safe_dump(params))
        start = time.perf_counter()
        for stage in stages:
            subprocess.run([sys.executable, str(code / "stages" / f"{stage}.py")], cwd=work,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=environment)
        seconds = time.perf_counter() - start
        metrics = json.loads((Path(work) / f"metrics/report/{stages[-1]}.json").read_text())
        tables = {name: pd.read_csv(Path(work) / f"data/dedup/{name}.csv", dtype=str,
                                    keep_default_na=False) for name in ("duplicates", "catalog")}
        thumbs = np.load(Path(work) / "data/dedup/thumbs.npy")
        if sheets is not None and (Path(work) / "plots/dedup").is_dir():
            shutil.copytree(Path(work) / "plots/dedup", sheets, dirs_exist_ok=True)
    return StageRun(seconds, metrics, tables["duplicates"], tables["catalog"], thumbs)


def baseline_code(folder: Path) -> Path:
    """The stage scripts, package and params of commit BASELINE, unpacked into `folder`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE, "stages",
                              "medimg", "params.yaml"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def mri_figures(mri: Path, sheets: Path | None) -> tuple[dict, StageRun]:
    """The stage on the MRI set now and at BASELINE, best of three alternating runs each
    (this machine's timings vary by about 10% from run to run), every removal that
    BASELINE did not make, and the neighbouring files' similarity groups now and then."""
    files = sorted(p for p in mri.rglob("*") if p.is_file())
    md5_rate = md5_loop(files)
    with tempfile.TemporaryDirectory() as folder:
        old_code = baseline_code(Path(folder))
        runs = {"baseline": [], "now": []}
        for _ in range(3):
            runs["baseline"].append(run_stages(mri, MRI_CLASSES, 2, ["dedup"], code=old_code,
                                               sheets=sheets and sheets / "baseline"))
            runs["now"].append(run_stages(mri, MRI_CLASSES, 2, ["dedup"],
                                          sheets=sheets and sheets / "now"))
    old, new = runs["baseline"][0], runs["now"][0]
    if sheets is not None:
        joined_sheets(mri, old.catalog, new.catalog, sheets / "newly_joined")
    seconds = {name: min(run.seconds for run in done) for name, done in runs.items()}
    before = set(zip(old.duplicates["path"], old.duplicates["match"], strict=True))
    added = new.duplicates[[(p, m) not in before for p, m in
                            zip(new.duplicates["path"], new.duplicates["match"], strict=True)]]
    return {
        "files": len(files),
        "stage_seconds": round(seconds["now"], 2),
        "stage_images_per_s": round(len(files) / seconds["now"], 1),
        "baseline_stage_seconds": round(seconds["baseline"], 2),
        "slowdown": round(seconds["now"] / seconds["baseline"], 2),
        "md5_loop_images_per_s": round(md5_rate, 1),
        "dedup_metrics": new.metrics,
        "baseline_dedup_metrics": old.metrics,
        "baseline_similarity": similarity_report(old.catalog),
        "new_removals": added[["path", "match", "representative", "edit", "correlation"]]
        .to_dict(orient="records"),
        "neighbours": neighbour_figures(new.catalog, new.thumbs, (old.catalog, old.thumbs)),
    }, new


def joined_sheets(mri: Path, before: pd.DataFrame, after: pd.DataFrame, folder: Path) -> None:
    """Contact sheets of the pairs that share a similarity group now but did not before
    and are not neighbouring files: the joins to look at for strangers."""
    new = newly_joined_pairs(before, after)
    rows = neighbour_pairs(after["path"])
    paths = after["path"].to_numpy()
    neighbours = set(zip(paths[rows["first"]], paths[rows["second"]], strict=True))
    blocks = [(f"newly joined: {a} | {b}", [Tile(mri / a, a), Tile(mri / b, b)])
              for a, b in zip(new["first"], new["second"], strict=True)
              if (a, b) not in neighbours and (b, a) not in neighbours]
    write_sheets(folder, "newly_joined", blocks)


def stage_figures(raw_dir: Path, classes: list[str], class_level: int) -> dict:
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file())
    md5_rate = md5_loop(files)
    run = run_stages(raw_dir, classes, class_level, ["dedup"])
    return {
        "files": len(files),
        "stage_seconds": round(run.seconds, 2),
        "stage_images_per_s": round(len(files) / run.seconds, 1),
        "md5_loop_images_per_s": round(md5_rate, 1),
        "dedup_metrics": run.metrics,
    }


def plant_copies(mri: Path, folder: Path, unplanted: StageRun, per_edit: int,
                 seed: int) -> pd.DataFrame:
    """Link the MRI set into `folder` and add `per_edit` edited copies per edit, each of a
    different original that the stage kept without copies of its own."""
    for source in sorted(p for p in mri.rglob("*") if p.is_file()):
        target = folder / source.relative_to(mri)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)
    copied = set(unplanted.duplicates["representative"])
    singles = sorted(set(unplanted.catalog["path"]) - copied)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(singles, per_edit * len(ALL_EDITS), replace=False)
    rows = []
    for number, (edit, original) in enumerate(zip(np.repeat(list(ALL_EDITS), per_edit), chosen,
                                                  strict=True)):
        image = Image.open(mri / original).convert("RGB")
        copy = str(Path(original).parent / f"planted_{number:04d}.png")
        ALL_EDITS[edit](image, rng).save(folder / copy)
        rows.append({"edit": edit, "copy": copy, "original": original})
    return pd.DataFrame(rows)


def planted_figures(planted: pd.DataFrame, run: StageRun) -> dict:
    """Per edit: copies paired with their own original (one removed as the other's
    duplicate), copies at least in the original's split group, wrong pairings, and the
    edits the stage named (seen from whichever of the two it kept)."""
    rep = dict(zip(run.duplicates["path"], run.duplicates["representative"], strict=True))
    edit = dict(zip(run.duplicates["path"], run.duplicates["edit"], strict=True))
    group = dict(zip(run.catalog["path"], run.catalog["group"], strict=True))
    found = {}
    for name, rows in planted.groupby("edit", sort=False):
        paired = [rep.get(c) == o or rep.get(o) == c
                  for c, o in zip(rows["copy"], rows["original"], strict=True)]
        grouped = [p or (c in group and group.get(c) == group.get(o))
                   for p, c, o in zip(paired, rows["copy"], rows["original"], strict=True)]
        wrong = [c in rep and not p for p, c in zip(paired, rows["copy"], strict=True)]
        named = {edit[c] if rep.get(c) == o else edit[o]
                 for p, c, o in zip(paired, rows["copy"], rows["original"], strict=True) if p}
        found[name] = {"copies": len(rows), "removed_with_original": int(sum(paired)),
                       "in_original_group": int(sum(grouped)), "removed_wrongly": int(sum(wrong)),
                       "edits_named": sorted(named)}
    return found


def generate_pngs(folder: Path, count: int) -> None:
    """Small RGB PNGs in two classes, with some exact copies among them."""
    rng = np.random.default_rng(0)
    for index in range(count):
        target = folder / ("a" if index % 2 else "b") / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if index % 50 == 49:
            target.write_bytes((folder / "a" / f"{index - 2:05d}.png").read_bytes())
            continue
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((50, 50), Image.Resampling.BILINEAR).save(target)


def index_figures(count: int, planted: int, max_distance: int, queries: int = 1,
                  entries: int = 1) -> dict:
    """Time the candidate search on `count` random images with `queries` query hashes and
    `entries` index hashes each (one and one: the near-duplicate index on its own), with
    `planted` pairs within `max_distance` bits that must all be found."""
    rng = np.random.default_rng(1)
    plain = queries == entries == 1
    asked = rng.integers(0, 2**64, count * queries, dtype=np.uint64, endpoint=False)
    held = asked if plain else rng.integers(0, 2**64, count * entries, dtype=np.uint64,
                                            endpoint=False)
    chosen = rng.permutation(count)[:2 * planted].reshape(planted, 2)
    for source, target in chosen:
        flips = rng.choice(64, rng.integers(0, max_distance + 1), replace=False)
        held[target * entries] = asked[source * queries] ^ np.uint64(
            sum(1 << int(bit) for bit in flips))
    start = time.perf_counter()
    if plain:
        first, second = near_pairs(asked, max_distance)
    else:
        first, second = near_pairs_between(asked, held, max_distance, os.cpu_count() or 1)
    seconds = time.perf_counter() - start
    found = set(zip((first // queries).tolist(), (second // entries).tolist(), strict=True))
    missed = sum((a, b) not in found and (b, a) not in found for a, b in chosen.tolist())
    return {"images": count, "hashes": count if plain else count * (queries + entries),
            "query_hashes_per_image": queries,
            "index_hashes_per_image": entries, "planted_pairs": planted,
            "max_distance": max_distance, "seconds": round(seconds, 2),
            "pairs_found": len(found), "planted_missed": missed}


def local_index_figures(count: int, planted: int, per_image: int = 500,
                        differing: int = 18) -> dict:
    """Time the local-feature candidate search (`medimg.data.features`) on `count` random
    images of `per_image` keypoints each (half found on the mirror), in one process, with
    `planted` pairs whose second image shows the first's content 1.3 times larger (a crop
    of 77%) and each descriptor with `differing` of its 256 bits changed (the median
    between a copy's keypoints and its original's on the MRI set): all must be found."""
    rng = np.random.default_rng(2)
    total = count * per_image
    descriptors = rng.integers(0, 256, (total, 32), dtype=np.uint8)
    points = np.stack([rng.uniform(16, 112, total), rng.uniform(16, 112, total),
                       rng.uniform(0, 360, total), rng.integers(0, 4, total)], axis=1)
    points = points.astype(np.float32)
    mirrored = np.tile(np.arange(per_image) >= per_image // 2, count)
    chosen = rng.permutation(count)[:2 * planted].reshape(planted, 2)
    for source, target in chosen:
        was = slice(source * per_image, (source + 1) * per_image)
        now = slice(target * per_image, (target + 1) * per_image)
        bits = np.zeros((per_image, 256), dtype=bool)
        np.put_along_axis(bits, rng.random((per_image, 256)).argsort(axis=1)[:, :differing],
                          True, axis=1)
        descriptors[now] = descriptors[was] ^ np.packbits(bits, axis=1)
        points[now] = points[was]
        points[now, :2] = (points[was, :2] - 64.0) * 1.3 + 64.0
        mirrored[now] = mirrored[was]
    owner = np.repeat(np.arange(count), per_image)
    start = time.perf_counter()
    found = indexed_candidates(descriptors, points, mirrored, owner, np.full(count, 128),
                               set(), workers=1)
    seconds = time.perf_counter() - start
    pairs = {(c.first, c.second) for c in found}
    missed = sum((min(a, b), max(a, b)) not in pairs for a, b in chosen.tolist())
    return {"images": count, "keypoints_per_image": per_image, "planted_pairs": planted,
            "bits_changed": differing, "min_votes": MIN_VOTES, "seconds": round(seconds, 1),
            "candidates": len(found), "planted_missed": missed}


def edit_names(names: list[str]) -> str:
    """The edits the stage named, with the rotations as one range."""
    turns = sorted(int(name.split()[-1]) for name in names if name.startswith("rotate "))
    shown = [f"`{name}`" if name else "(pixel-identical)" for name in names
             if not name.startswith("rotate ")]
    if turns:
        shown.append(f"`rotate N` for N from {turns[0]} to {turns[-1]}")
    return ", ".join(shown)


def dedup_markdown(root: Path) -> str:
    bench = results_file(root, "dedup.json")
    mri, pngs = bench["brain_tumor_mri"], bench["generated_pngs"]
    keys = ("found", "kept", "exact_duplicates", "pixel_duplicates", "near_duplicates",
            "conflicts", "rejected", "ignored")
    planted = bench["planted_edits"]
    lines = [
        "| stage | found | kept | exact | pixel | near | label conflicts | rejected | ignored |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {name} | " + " | ".join(str(counts[key]) for key in keys) + " |"
          for name, counts in ((f"before crops anywhere ({BASELINE})",
                                mri["baseline_dedup_metrics"]), ("now", mri["dedup_metrics"]))),
        "",
        f"The {len(mri['new_removals'])} removals this adds on the MRI set are listed in "
        "`benchmarks/results/dedup.json` (`new_removals`) and were checked by eye on the "
        "contact sheets (`--sheets`).",
        "",
        "Edited copies planted among the real images (`medimg/data/synthetic_edits.py`, "
        f"{planted['per_edit']} per edit, each of a different original, seed "
        f"{planted['seed']}; the thresholds were set on seed 0 and on the real set's own "
        "pairs). Two edits at once are marked *two*:",
        "",
        "| edit | copies | removed as a copy of its own original | at least in its original's "
        "split group | removed against a wrong image | edit named |",
        "|---|---|---|---|---|---|",
    ]
    for edit, row in planted["edits"].items():
        named = edit_names(row["edits_named"])
        shown = f"{edit} (*two*)" if edit in planted["two_edits"] else edit
        lines.append(f"| {shown} | {row['copies']} | {row['removed_with_original']} | "
                     f"{row['in_original_group']} | {row['removed_wrongly']} | {named} |")
    similar, before = mri["dedup_metrics"]["similarity"], mri["baseline_similarity"]
    near = mri["neighbours"]
    lines += [
        "",
        "Similarity groups (neighbouring slices kept together for the split):",
        "",
        "| | groups | images in them | largest | groups spanning two classes |",
        "|---|---|---|---|---|",
        f"| before ({BASELINE}) | {before['groups']} | {before['images']} | "
        f"{before['largest']} | {before['cross_class']} |",
        f"| now | {similar['groups']} | {similar['images']} | {similar['largest']} | "
        f"{similar['cross_class']} |",
        "",
        "Group sizes now: " + ", ".join(f"{size}: {n}" for size, n in similar["sizes"].items())
        + ".",
        "",
        f"Neighbouring files (one folder, numbers 1 or 2 apart): {near['now']['neighbour_pairs']}"
        f" pairs, {near['now']['look_alike']} of which look alike (whole-thumbnail correlation "
        "at least 0.85, set by eye); in one group before "
        f"{near['before']['look_alike_in_one_group']} "
        f"({near['before']['share_in_one_group']:.1%}), now "
        f"{near['now']['look_alike_in_one_group']} ({near['now']['share_in_one_group']:.1%}). "
        f"{near['newly_joined']['pairs']} pairs of images share a group now and did not "
        f"before, {near['newly_joined']['neighbouring_files']} of them neighbouring files; "
        f"{near['newly_joined']['cross_class']} of them span two classes.",
        "",
        f"Speed on {bench['machine']['cpus']} cores (`python -m benchmarks.dedup_benchmark`, whole "
        "stage including process start and contact sheets, best of three runs each):",
        "",
        "| input | files | stage seconds | stage images/s | plain MD5 loop images/s |",
        "|---|---|---|---|---|",
        f"| Brain Tumor MRI set, before crops anywhere ({BASELINE}) | {mri['files']} | "
        f"{mri['baseline_stage_seconds']} | "
        f"{round(mri['files'] / mri['baseline_stage_seconds'], 1)} | "
        f"{mri['md5_loop_images_per_s']} |",
        f"| Brain Tumor MRI set, now | {mri['files']} | {mri['stage_seconds']} | "
        f"{mri['stage_images_per_s']} | {mri['md5_loop_images_per_s']} |",
        f"| generated 50x50 PNGs, now | {pngs['files']} | {pngs['stage_seconds']} | "
        f"{pngs['stage_images_per_s']} | {pngs['md5_loop_images_per_s']} |",
        "",
        f"The stage now takes {mri['slowdown']}x as long as before on the MRI set (goal: at "
        "most 1.5x).",
    ]
    for key, what in (("near_index", "Near-duplicate index"), ("view_index", "View index")):
        index = bench[key]
        lines.append("")
        lines.append(
            f"{what}: {index['images']:,} random images, {index['query_hashes_per_image']} "
            f"query and {index['index_hashes_per_image']} indexed hashes each, "
            f"{index['planted_pairs']} planted pairs within {index['max_distance']} bits: "
            f"{index['seconds']} s, {index['planted_missed']} planted pairs missed.")
    local = bench["local_index"]
    lines += ["", f"Local-feature index: {local['images']:,} random images, "
              f"{local['keypoints_per_image']} ORB descriptors each, {local['planted_pairs']} "
              f"planted crops with {local['bits_changed']} of 256 bits changed per descriptor, "
              f"in one process: {local['seconds']} s, {local['candidates']} candidate pairs, "
              f"{local['planted_missed']} planted pairs missed."]
    split = bench["brain_tumor_mri_respect_existing"]
    copies = split["test_copies_removed"]
    lines += ["", "With its own `Testing` folder kept (`split.respect_existing: Testing`): "
              f"{copies['test_images']} of the {split['test']['n']} de-duplicated test images "
              f"had copies on the training side: {copies['copies']} copies removed "
              f"({copies.get('exact', 0)} byte-identical, {copies.get('pixel', 0)} "
              f"pixel-identical, {copies.get('near', 0)} near), and {split['excluded']} more "
              "training images excluded for sharing a similarity group with a test image. "
              f"Train {split['train']['n']}, val {split['val']['n']}, test "
              f"{split['test']['n']}; overlap across splits: "
              + ", ".join(f"{k} {v}" for k, v in split["overlap"].items()) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mri", type=Path,
                        default=REPO.parent / "shared" / "datasets" / "brain-tumor-mri")
    parser.add_argument("--pngs", type=int, default=20_000)
    parser.add_argument("--hashes", type=int, default=300_000)
    parser.add_argument("--per-edit", type=int, default=20)
    parser.add_argument("--sheets", type=Path, default=None,
                        help="copy the contact sheets of the MRI runs here, to look at")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/dedup.json")
    args = parser.parse_args()
    if not args.mri.is_dir():
        raise SystemExit(f"--mri: folder {args.mri} does not exist")
    with (REPO / "params.yaml").open() as handle:
        dedup = yaml.safe_load(handle)["dedup"]
    mri, unplanted = mri_figures(args.mri, args.sheets and args.sheets / "unplanted")
    results = {
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "brain_tumor_mri": mri,
    }
    with tempfile.TemporaryDirectory() as folder:
        planted = plant_copies(args.mri, Path(folder), unplanted, args.per_edit,
                               seed=PLANT_SEED)
        run = run_stages(Path(folder), MRI_CLASSES, 2, ["dedup"],
                         sheets=args.sheets and args.sheets / "planted")
        results["planted_edits"] = {"per_edit": args.per_edit, "seed": PLANT_SEED,
                                    "two_edits": list(TWO_EDITS),
                                    "seconds": round(run.seconds, 2),
                                    "edits": planted_figures(planted, run)}
    with tempfile.TemporaryDirectory() as folder:
        generate_pngs(Path(folder), args.pngs)
        results["generated_pngs"] = stage_figures(Path(folder), ["a", "b"], class_level=1)
    results["near_index"] = index_figures(args.hashes, 1000, dedup["near_hamming"])
    results["view_index"] = index_figures(args.hashes, 1000, dedup["edit_hamming"],
                                          queries=2, entries=48)
    results["local_index"] = local_index_figures(args.hashes, 1000)
    split = run_stages(args.mri, MRI_CLASSES, 2, ["dedup", "split"], "Testing")
    results["brain_tumor_mri_respect_existing"] = split.metrics
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "brain_tumor_mri"}, indent=2))


if __name__ == "__main__":
    main()
