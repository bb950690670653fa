"""Stage `dedup`: catalog the raw images, reject broken files, remove exact, pixel and near
duplicates and label conflicts, and join the split groups of similar images.

Writes data/dedup/{catalog,duplicates,rejects,ignored}.csv, the catalog's 64x64 greyscale
thumbnails (thumbs.npy, in catalog order, for the split's leakage check) and
metrics/dedup.json, where `found` equals the sum of every other count. With
`dedup.enabled: false` nothing is removed and `left_in` counts the copies that stayed.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd

from medimg.catalog import (
    DatasetError,
    Thresholds,
    assign_groups,
    deduplicate,
    describe_all,
    similarity_groups,
    walk_dataset,
)
from medimg.io import write_csv, write_json, write_npy
from medimg.params import DataParams, DedupParams, load_params

OUT_DIR = Path("data/dedup")
METRICS = Path("metrics/dedup.json")


def read_groups_file(raw_dir: Path, name: str | None) -> pd.DataFrame | None:
    if name is None or not (raw_dir / name).is_file():
        if name is not None:
            print(f"dedup: no {raw_dir / name}; groups come from data.group_regex or per image")
        return None
    return pd.read_csv(raw_dir / name, dtype=str)


def use_similarity(dedup: DedupParams, data: DataParams, groups_table: pd.DataFrame | None) -> bool:
    if dedup.similarity == "auto":
        return data.group_regex is None and groups_table is None
    return dedup.similarity == "on"


def main() -> None:
    params = load_params()
    data, dedup = params.data, params.dedup
    raw_dir = Path(data.raw_dir)
    skip = frozenset([data.groups_file] if data.groups_file else [])
    walk = walk_dataset(raw_dir, params.classes, data.class_level, skip=skip)
    described = describe_all(raw_dir, [c.path for c in walk.candidates], dedup.min_side,
                             dedup.max_pixels, dedup.workers or os.cpu_count() or 1)
    rejects = pd.DataFrame([d for d in described if "reason" in d], columns=["path", "reason"])
    usable = [d for d in described if "reason" not in d]
    if not usable:
        raise DatasetError(f"{raw_dir}: none of {len(described)} images could be used; "
                           f"first reason: {rejects['reason'].iat[0]}")
    thumbs = np.stack([d.pop("thumb") for d in usable])
    images = pd.DataFrame(usable)
    where = {c.path: c for c in walk.candidates}
    images.insert(1, "class", [where[p].label_name for p in images["path"]])
    images.insert(2, "label", images["class"].map(params.classes.index))
    images.insert(3, "origin", [where[p].origin for p in images["path"]])
    groups_table = read_groups_file(raw_dir, data.groups_file)
    group, source = assign_groups(images["path"], groups_table, data.group_regex)
    images.insert(4, "group", group)
    images.insert(5, "group_source", source)
    limits = Thresholds(dedup.near_hamming, dedup.near_correlation,
                        prefer_origin=params.split.respect_existing)
    kept, removed = deduplicate(images, thumbs, limits)
    if not dedup.enabled:  # the leaky baseline: everything stays, copies are only counted
        left_in = removed["match"].value_counts()
        kept, removed = images.sort_values("path").reset_index(drop=True), removed.iloc[:0]
    row = {path: i for i, path in enumerate(images["path"])}
    kept_thumbs = thumbs[[row[p] for p in kept["path"]]]
    if dedup.enabled and use_similarity(dedup, data, groups_table):
        kept["group"], kept["group_source"] = similarity_groups(
            kept, kept_thumbs, dedup.similar_hamming, dedup.similar_correlation)
    ignored = pd.DataFrame(walk.ignored, columns=["path", "reason"])

    matches = removed["match"].value_counts()
    counts = {
        "found": len(walk.candidates) + len(ignored),
        "kept": len(kept),
        "exact_duplicates": int(matches.get("exact", 0)),
        "pixel_duplicates": int(matches.get("pixel", 0)),
        "near_duplicates": int(matches.get("near", 0)),
        "conflicts": int(matches.get("conflict", 0)),
        "rejected": len(rejects),
        "ignored": len(ignored),
    }
    assert counts["found"] == sum(v for k, v in counts.items() if k != "found"), counts
    if not dedup.enabled:
        counts["left_in"] = {match: int(left_in.get(match, 0))
                             for match in ("exact", "pixel", "near", "conflict")}
    write_csv(OUT_DIR / "catalog.csv", kept)
    write_npy(OUT_DIR / "thumbs.npy", kept_thumbs)
    write_csv(OUT_DIR / "duplicates.csv", removed)
    write_csv(OUT_DIR / "rejects.csv", rejects)
    write_csv(OUT_DIR / "ignored.csv", ignored)
    write_json(METRICS, counts)
    print("dedup: " + ", ".join(f"{key} {value}" for key, value in counts.items()))
    if not dedup.enabled:
        print("dedup: dedup.enabled is false: duplicates and conflicts were kept")


if __name__ == "__main__":
    main()
