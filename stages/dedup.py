"""Stage `dedup`: catalog the raw images, reject broken files, remove exact, pixel and near
duplicates (edited copies included) and label conflicts, and join the split groups of
similar images.

Images come from class folders or a labels manifest (data.labels_file); DICOM series and
NIfTI volumes are cut into slices, and split groups come, in this order, from the groups
file, the manifest, the headers (PatientID; StudyInstanceUID where PatientID is empty or
constant) or the volume, data.group_regex, or the image alone. Identifiers leave as
pseudonyms only (medimg.data.pseudonyms).

Writes data/dedup/{catalog,duplicates,rejects,ignored,series}.csv, the catalog's 64x64 greyscale
thumbnails (thumbs.npy, in catalog order, for the split's leakage check),
metrics/report/dedup.json, where `found` equals the sum of every other count and
`similarity` describes the similarity groups (metrics/dedup.json, the DVC metric, holds
`found` and `kept`), and contact sheets to check it all by eye
(plots/dedup/duplicates_*.jpg, conflicts_*.jpg, similarity_*.jpg). With
`dedup.enabled: false` nothing is removed and `left_in` counts the copies that stayed.
"""

import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medimg.data.catalog import (
    Pictures,
    Thresholds,
    assign_groups,
    deduplicate,
    describe_all,
    fine_grey,
    restore_origin,
    similarity_groups,
    similarity_report,
)
from medimg.data.contact import Tile, write_sheets
from medimg.data.images import split_address
from medimg.data.manifest import read_manifest
from medimg.data.pseudonyms import Pseudonyms
from medimg.data.walk import SliceChoice, Walk, walk_dataset
from medimg.errors import DatasetError, run
from medimg.io import write_csv, write_json, write_npy
from medimg.params import DataParams, DedupParams, load_params

OUT_DIR = Path("data/dedup")
METRICS = Path("metrics/dedup.json")  # headline figures: the DVC metric
REPORT = Path("metrics/report/dedup.json")  # every count
SHEETS = Path("plots/dedup")
LARGEST_GROUPS = 25  # similarity groups shown besides those that span classes


def read_groups_file(raw_dir: Path, name: str | None, walk: Walk) -> pd.DataFrame | None:
    """data.groups_file's path,group rows; a row that names no file found is an error."""
    if name is None or not (raw_dir / name).is_file():
        if name is not None:
            print(f"dedup: no {raw_dir / name}; groups come from the data, data.group_regex "
                  f"or per image")
        return None
    table = pd.read_csv(raw_dir / name, dtype=str, keep_default_na=False,
                        encoding="utf-8-sig")
    files = {split_address(c.path)[0].as_posix() for c in walk.candidates}
    files |= {path for path, _ in walk.ignored}
    unknown = table.index[~table["path"].isin(files)]
    if len(unknown):
        raise DatasetError(f"data.groups_file: {raw_dir / name}: {len(unknown)} row(s) name no "
                           f"file found, first line {unknown[0] + 2}: "
                           f"{table['path'].iat[unknown[0]]}")
    return table


def data_groups(walk: Walk, pseudonyms: Pseudonyms) -> pd.DataFrame:
    """Per candidate: the pseudonyms of its patient, series and DICOM instance, its place
    in the series, and the split group the data itself gives: a DICOM file's PatientID,
    or its StudyInstanceUID where PatientID is empty or the same for every file of a
    multi-study export (an anonymiser's constant); a volume is one subject."""
    headers = [c.header for c in walk.candidates if c.header is not None]
    patients = {h.patient for h in headers if h.patient}
    constant = len(patients) == 1 and len({h.study for h in headers}) > 1
    rows = []
    for c in walk.candidates:
        row = {"patient": "", "series": "", "instance": "", "group": "", "group_source": "",
               "slice": "" if c.position is None else str(c.position),
               "manifest_group": c.manifest_group}
        if c.header is not None:
            h = c.header
            by_study = constant or not h.patient
            kind, value = ("StudyInstanceUID", h.study) if by_study else ("PatientID", h.patient)
            if value:
                row["patient"] = pseudonyms("patient", value)
                row["group"], row["group_source"] = row["patient"], kind
            row["series"] = pseudonyms("series", h.series or c.path.split("#")[0])
            # The frames of one multi-frame file share its SOPInstanceUID.
            frame = split_address(c.path)[2] if h.frames > 1 else None
            row["instance"] = (pseudonyms("instance", f"{h.instance}#{frame}")
                               if h.instance else "")
        elif c.volume:
            row["patient"] = row["series"] = pseudonyms("subject", c.volume)
            row["group"], row["group_source"] = row["patient"], "volume"
        rows.append(row)
    return pd.DataFrame(rows, index=[c.path for c in walk.candidates])


def series_table(walk: Walk, groups: pd.DataFrame, pseudonyms: Pseudonyms) -> pd.DataFrame:
    """One row per series or volume taken: its pseudonym, patient, slices taken, and what
    is wrong with it (mixed modalities, missing slices), if anything."""
    taken = groups[groups["series"] != ""]
    notes = {pseudonyms("series", uid): note for uid, note in walk.series_notes}
    table = taken.groupby("series").agg(patient=("patient", "first"),
                                        slices=("slice", "size")).reset_index()
    table["note"] = table["series"].map(notes).fillna("")
    return table


def use_similarity(dedup: DedupParams, data: DataParams, groups_table: pd.DataFrame | None) -> bool:
    if dedup.similarity == "auto":
        return data.group_regex is None and groups_table is None
    return dedup.similarity == "on"


def review(raw_dir: Path, kept: pd.DataFrame, removed: pd.DataFrame, limit: int,
           max_pixels: int, workers: int) -> None:
    """Contact sheets of what needs an eye: each near duplicate (edited copies included)
    beside the image it duplicates, weakest match first (byte- and pixel-identical copies
    are proven by their hashes and only listed in duplicates.csv), each label-conflict
    group, and the similarity groups that span classes and the LARGEST_GROUPS largest; at
    most `limit` blocks of each kind."""
    def tiles(rows: pd.DataFrame) -> list[Tile]:
        return [Tile(raw_dir / path, f"{path}\n{label}")
                for path, label in zip(rows["path"], rows["class"], strict=True)]

    copies = removed[removed["match"] == "near"].sort_values(["correlation", "path"]).head(limit)
    pairs = [(" ".join(filter(None, [r.match, r.edit, f"{r.correlation:.3f}"])),
              [Tile(raw_dir / r.representative, f"{r.representative}\nkept"),
               Tile(raw_dir / r.path, f"{r.path}\nremoved")])
             for r in copies.itertuples()]
    conflicts = [(f"conflict: {', '.join(sorted(set(group['class'])))}", tiles(group))
                 for _, group in removed[removed["match"] == "conflict"].groupby("representative")]
    joined = kept[kept["group_source"] == "similarity"]
    ranked = joined.groupby("group")["class"].agg(["nunique", "size"]).sort_values(
        ["nunique", "size"], ascending=False)
    ranked = ranked[ranked["nunique"] > 1].head(limit).combine_first(
        ranked.head(LARGEST_GROUPS)).sort_values(["nunique", "size"], ascending=False)
    similar = [(f"{size} images, {classes} class{'es' if classes > 1 else ''}",
                tiles(joined[joined["group"] == group]))
               for group, classes, size in ranked.itertuples()]
    for stem, blocks in (("duplicates", pairs), ("conflicts", conflicts[:limit]),
                         ("similarity", similar[:limit])):
        write_sheets(SHEETS, stem, blocks, max_pixels=max_pixels, workers=workers)


def main() -> None:
    params = load_params()
    data, dedup = params.data, params.dedup
    raw_dir = Path(data.raw_dir)
    skip = frozenset(name for name in (data.groups_file, data.key_file, data.labels_file)
                     if name)
    manifest = (read_manifest(raw_dir / data.labels_file, params.classes)
                if data.labels_file else None)
    workers = dedup.workers or os.cpu_count() or 1
    choice = SliceChoice(data.volume_plane, data.slice_step, data.slice_central,
                         data.slice_min_foreground)
    walk = walk_dataset(raw_dir, params.classes, data.class_level, skip=skip,
                        ignore_classes=data.ignore_classes, manifest=manifest, choice=choice,
                        workers=workers, labels_per=data.labels_per)
    pseudonyms = Pseudonyms(raw_dir / data.key_file)
    found = data_groups(walk, pseudonyms)
    described = describe_all(raw_dir, [c.path for c in walk.candidates], dedup.min_side,
                             dedup.max_pixels, workers)
    rejects = pd.DataFrame([d for d in described if "reason" in d], columns=["path", "reason"])
    usable = [d for d in described if "reason" not in d]
    if not usable:
        raise DatasetError(f"{raw_dir}: none of {len(described)} images could be used; "
                           f"first reason: {rejects['reason'].iat[0]}")
    thumbs = np.stack([d.pop("thumb") for d in usable])
    pictures = Pictures([d.pop("grey") for d in usable], [d.pop("views") for d in usable],
                        [d.pop("features") for d in usable], [d["path"] for d in usable],
                        partial(fine_grey, raw_dir, dedup.max_pixels))
    images = pd.DataFrame(usable)
    where = {c.path: c for c in walk.candidates}
    images.insert(1, "class", [where[p].label_name for p in images["path"]])
    images.insert(2, "label", images["class"].map(params.classes.index))
    images.insert(3, "origin", [where[p].origin for p in images["path"]])
    groups_table = read_groups_file(raw_dir, data.groups_file, walk)
    own = found.loc[images["path"]].reset_index(drop=True)
    group, source = assign_groups(images["path"], own, groups_table, data.group_regex,
                                  pseudonyms)
    images.insert(4, "group", group)
    images.insert(5, "group_source", source)
    for at, column in enumerate(("patient", "series", "slice", "instance"), start=6):
        images.insert(at, column, own[column])
    limits = Thresholds(dedup.near_hamming, dedup.near_correlation, dedup.edit_hamming,
                        dedup.edit_correlation, dedup.crop_correlation,
                        prefer_origin=params.split.respect_existing)
    kept, removed = deduplicate(images, thumbs, pictures, limits, workers)
    if dedup.enabled and dedup.keep_test_copies:  # the test folder as published
        kept, removed = restore_origin(images, kept, removed, params.split.respect_existing)
    if not dedup.enabled:  # the leaky baseline: everything stays, copies are only counted
        left_in = removed["match"].value_counts()
        kept, removed = images.sort_values("path").reset_index(drop=True), removed.iloc[:0]
    row = {path: i for i, path in enumerate(images["path"])}
    kept_thumbs = thumbs[[row[p] for p in kept["path"]]]
    if dedup.enabled and use_similarity(dedup, data, groups_table):
        kept["group"], kept["group_source"] = similarity_groups(
            kept, kept_thumbs, dedup.similar_hamming, dedup.similar_correlation,
            dedup.similar_linkage, dedup.similar_far_hamming, dedup.similar_far_correlation)
    kept = kept.drop(columns="instance")
    ignored = pd.DataFrame(walk.ignored, columns=["path", "reason"])

    matches = removed["match"].value_counts()
    counts = {
        "found": len(walk.candidates) + len(ignored),
        "kept": len(kept),
        "exact_duplicates": int(matches.get("exact", 0)),
        "pixel_duplicates": int(matches.get("pixel", 0)),
        "instance_duplicates": int(matches.get("instance", 0)),
        "near_duplicates": int(matches.get("near", 0)),
        "conflicts": int(matches.get("conflict", 0)),
        "rejected": len(rejects),
        "ignored": len(ignored),
    }
    if counts["found"] != sum(v for k, v in counts.items() if k != "found"):
        raise RuntimeError(f"dedup: the tables do not account for every file: {counts}")
    if not dedup.enabled:
        counts["left_in"] = {match: int(left_in.get(match, 0))
                             for match in ("exact", "pixel", "near", "conflict")}
    if "test_copy" in kept:
        counts["test_copies_kept"] = int((kept["test_copy"] != "").sum())
    counts["similarity"] = similarity_report(kept)
    series = series_table(walk, found, pseudonyms)
    counts["series"] = {"taken": len(series), "with_notes": int((series["note"] != "").sum())}
    counts["group_sources"] = kept["group_source"].value_counts().sort_index().to_dict()
    write_csv(OUT_DIR / "catalog.csv", kept)
    write_npy(OUT_DIR / "thumbs.npy", kept_thumbs)
    write_csv(OUT_DIR / "duplicates.csv", removed)
    write_csv(OUT_DIR / "rejects.csv", rejects)
    write_csv(OUT_DIR / "ignored.csv", ignored)
    write_csv(OUT_DIR / "series.csv", series)
    review(raw_dir, kept, removed, dedup.review_limit, dedup.max_pixels, workers)
    write_json(REPORT, counts)
    write_json(METRICS, {key: counts[key] for key in ("found", "kept")})
    print("dedup: " + ", ".join(f"{key} {value}" for key, value in counts.items()
                                if not isinstance(value, dict)))
    print("dedup: similarity groups: " + ", ".join(
        f"{key} {value}" for key, value in counts["similarity"].items()))
    if not dedup.enabled:
        print("dedup: dedup.enabled is false: duplicates and conflicts were kept")


if __name__ == "__main__":
    run(main)
