"""Stage `dedup`: catalog the raw images, reject broken files, drop exact and pixel duplicates.

Writes data/dedup/{catalog,duplicates,rejects,ignored}.csv and metrics/dedup.json, where
`found` equals the sum of every other count: each input file is accounted for.
"""

from pathlib import Path

import pandas as pd

from medimg.catalog import assign_groups, deduplicate, describe, walk_dataset
from medimg.io import write_csv, write_json
from medimg.params import load_params

OUT_DIR = Path("data/dedup")
METRICS = Path("metrics/dedup.json")


def read_groups_file(raw_dir: Path, name: str | None) -> pd.DataFrame | None:
    if name is None or not (raw_dir / name).is_file():
        if name is not None:
            print(f"dedup: no {raw_dir / name}; groups come from data.group_regex or per image")
        return None
    return pd.read_csv(raw_dir / name, dtype=str)


def main() -> None:
    params = load_params()
    raw_dir = Path(params.data.raw_dir)
    groups_file = params.data.groups_file
    skip = frozenset([groups_file] if groups_file else [])
    walk = walk_dataset(raw_dir, params.classes, skip=skip)
    described = [describe(raw_dir, rel, params.dedup.min_side, params.dedup.max_pixels)
                 for rel, _ in walk.candidates]
    classes = dict(walk.candidates)
    rejects = pd.DataFrame([d for d in described if "reason" in d], columns=["path", "reason"])
    images = pd.DataFrame([d for d in described if "reason" not in d])
    images.insert(1, "class", images["path"].map(classes))
    images.insert(2, "label", images["class"].map(params.classes.index))
    groups_table = read_groups_file(raw_dir, groups_file)
    group, source = assign_groups(images["path"], groups_table, params.data.group_regex)
    images.insert(3, "group", group)
    images.insert(4, "group_source", source)
    kept, removed = deduplicate(images)
    ignored = pd.DataFrame(walk.ignored, columns=["path", "reason"])

    counts = {
        "found": len(walk.candidates) + len(ignored),
        "kept": len(kept),
        "exact_duplicates": int((removed["match"] == "exact").sum()),
        "pixel_duplicates": int((removed["match"] == "pixel").sum()),
        "conflicts": int((removed["match"] == "conflict").sum()),
        "rejected": len(rejects),
        "ignored": len(ignored),
    }
    assert counts["found"] == sum(v for k, v in counts.items() if k != "found"), counts
    write_csv(OUT_DIR / "catalog.csv", kept)
    write_csv(OUT_DIR / "duplicates.csv", removed)
    write_csv(OUT_DIR / "rejects.csv", rejects)
    write_csv(OUT_DIR / "ignored.csv", ignored)
    write_json(METRICS, counts)
    print("dedup: " + ", ".join(f"{key} {value}" for key, value in counts.items()))


if __name__ == "__main__":
    main()
