"""Stage `split`: stratified train/val/test split that keeps every group in one split,
optionally k-fold or respecting a dataset's own test folder, and proof that nothing
crosses the splits.

Writes data/split/split.csv (the catalog plus a `split` column, in catalog order),
data/split/closest_pairs.csv with its contact sheets plots/split/closest_pairs_*.jpg,
data/split/test_copies.csv, data/split/leaks.csv, data/split/leaked_test.csv,
metrics/report/split.json (the split table) and metrics/split.json (images per split, the
DVC metric). Stops when a class has too few images in a split to be evaluated. Fails,
naming the pairs, if any group, file hash, pixel hash or near duplicate crosses splits,
unless dedup.enabled is false: then the leaks are counted.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from medimg.data.contact import Tile, write_sheets
from medimg.data.splitting import (
    EXCLUDED,
    SPLITS,
    assign_splits,
    check_class_counts,
    closest_pairs,
    leakage,
)
from medimg.errors import SplitError, run
from medimg.io import write_csv, write_json
from medimg.params import load_params

DEDUP = Path("data/dedup")
OUT_DIR = Path("data/split")
METRICS = Path("metrics/split.json")  # the headline figure: the DVC metric
REPORT = Path("metrics/report/split.json")  # the split table
SHEETS = Path("plots/split")


def split_table(table: pd.DataFrame, classes: list[str]) -> dict:
    """The original study's split table: counts and class shares per split."""
    report = {}
    for name in SPLITS:
        part = table[table["split"] == name]
        counts = part["class"].value_counts().reindex(classes, fill_value=0)
        report[name] = {
            "n": len(part),
            "groups": int(part["group"].nunique()),
            "per_class": {c: int(counts[c]) for c in classes},
            "percent": {c: round(100.0 * counts[c] / max(len(part), 1), 2) for c in classes},
        }
    report[EXCLUDED] = int((table["split"] == EXCLUDED).sum())
    return report


def group_sources(table: pd.DataFrame) -> dict:
    """For each source of the images (the folders above the class folder, or a manifest's
    split), how its split groups were found: images and groups per group source, and the
    patients (from the headers) it holds."""
    report = {}
    for origin, part in table.groupby("origin"):
        sources = part.groupby("group_source")["group"].agg(["size", "nunique"])
        report[origin or "(all)"] = {
            "patients": int(part.loc[part["patient"] != "", "patient"].nunique()),
            **{name: {"images": int(row["size"]), "groups": int(row["nunique"])}
               for name, row in sources.iterrows()}}
    return report


def test_copies(duplicates: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Images removed by dedup whose kept copy is in the test split but that came from
    elsewhere: the training copies of test images."""
    test_paths = set(table.loc[table["split"] == "test", "path"])
    test_origin = table.loc[table["split"] == "test", "origin"].iat[0]
    copies = duplicates[duplicates["representative"].isin(test_paths)
                        & (duplicates["origin"] != test_origin)]
    return copies[["representative", "path", "match", "correlation"]].rename(
        columns={"representative": "test_image", "path": "removed_copy"})


def leaked_test_images(table: pd.DataFrame, offenders: pd.DataFrame) -> pd.DataFrame:
    """Test images with a byte, pixel or near copy among the training or validation
    images: those whose answer the model may have memorised. One row per image and kind."""
    used = table[table["split"] != EXCLUDED]
    test, seen = used[used["split"] == "test"], used[used["split"] != "test"]
    rows = [test.loc[test[key].isin(seen[key]), ["path"]].assign(kind=key)
            for key in ("sha256", "pixel_sha256")]
    split = dict(zip(table["path"], table["split"], strict=True))
    near = offenders[offenders["kind"] == "near_duplicate"]
    rows.append(pd.DataFrame({
        "path": [a if split[a] == "test" else b for a, b in zip(near["a"], near["b"], strict=True)
                 if "test" in (split[a], split[b])],
        "kind": "near_duplicate"}))
    return pd.concat(rows, ignore_index=True).drop_duplicates().sort_values(["path", "kind"])


def review(raw_dir: Path, pairs: pd.DataFrame, max_pixels: int) -> None:
    """Contact sheets of the closest cross-split pairs, the leakage left to judge by eye."""
    rows = [(f"{r.split_a} / {r.split_b}\npHash {r.phash_distance}, detail "
             f"{r.detail_correlation:.3f}",
             [Tile(raw_dir / r.a, f"{r.a}\n{r.split_a}"),
              Tile(raw_dir / r.b, f"{r.b}\n{r.split_b}")])
            for r in pairs.itertuples()]
    write_sheets(SHEETS, "closest_pairs", rows, max_pixels=max_pixels)


def main() -> None:
    params = load_params()
    table = pd.read_csv(DEDUP / "catalog.csv", dtype=str, keep_default_na=False)
    for column in ("label", "width", "height"):
        table[column] = table[column].astype(int)
    thumbs = np.load(DEDUP / "thumbs.npy")
    split = params.split
    table["split"] = assign_splits(table, split.val, split.test, split.seed, split.folds,
                                   split.fold, split.respect_existing)
    check_class_counts(table, params.classes, split.min_per_split)
    overlap, offenders = leakage(table, thumbs, params.dedup.near_hamming,
                                 params.dedup.near_correlation)
    if len(offenders) and params.dedup.enabled:
        listing = "; ".join(f"{r.kind}: {r.a} <-> {r.b} ({r.detail})"
                            for r in offenders.head(20).itertuples())
        raise SplitError(f"split: {len(offenders)} leaks across splits: {listing}")
    report = split_table(table, params.classes)
    report["overlap"] = overlap
    report["groups_from"] = group_sources(table)
    if not params.dedup.enabled:  # the leaky baseline: measured, not refused
        leaked = leaked_test_images(table, offenders)
        report["leaks"] = {"pairs": len(offenders),
                           "test_images_with_copy": int(leaked["path"].nunique()),
                           **{kind: int(n) for kind, n in leaked["kind"].value_counts().items()}}
        print(f"split: dedup.enabled is false: {len(offenders)} leaks across splits, "
              f"{report['leaks']['test_images_with_copy']} test images with a copy outside "
              f"test; listed in {OUT_DIR / 'leaks.csv'} and {OUT_DIR / 'leaked_test.csv'}")
    else:
        leaked = pd.DataFrame(columns=["path", "kind"])
    if split.respect_existing is not None:
        duplicates = pd.read_csv(DEDUP / "duplicates.csv", dtype={"origin": str},
                                 keep_default_na=False)
        copies = test_copies(duplicates, table)
        report["test_copies_removed"] = {
            "test_images": int(copies["test_image"].nunique()),
            "copies": len(copies),
            **{match: int(n) for match, n in copies["match"].value_counts().items()},
        }
    else:
        copies = pd.DataFrame(columns=["test_image", "removed_copy", "match", "correlation"])
    write_csv(OUT_DIR / "split.csv", table)
    closest = closest_pairs(table, thumbs, split.closest_pairs)
    write_csv(OUT_DIR / "closest_pairs.csv", closest)
    review(Path(params.data.raw_dir), closest.head(params.dedup.review_limit),
           params.dedup.max_pixels)
    write_csv(OUT_DIR / "test_copies.csv", copies)
    write_csv(OUT_DIR / "leaks.csv", offenders)
    write_csv(OUT_DIR / "leaked_test.csv", leaked)
    write_json(REPORT, report)
    # The DVC metric is the one figure `dvc exp show` must keep on screen: patients in more
    # than one split. Images per split and series across splits are in the report.
    write_json(METRICS, {"patients_across_splits": overlap["patient"]})
    print("split: " + ", ".join(f"{s} {report[s]['n']} ({report[s]['per_class']})"
                                for s in SPLITS) + f", excluded {report[EXCLUDED]}")


if __name__ == "__main__":
    run(main)
