"""Stage `split`: stratified train/val/test split that keeps every group in one split.

Writes data/split/split.csv (the catalog plus a `split` column) and metrics/split.json
(per-split totals, per-class counts and shares).
"""

from pathlib import Path

import pandas as pd

from medimg.io import write_csv, write_json
from medimg.params import load_params
from medimg.splitting import SPLITS, assign_splits

CATALOG = Path("data/dedup/catalog.csv")
OUT = Path("data/split/split.csv")
METRICS = Path("metrics/split.json")


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
    crossing = table.groupby("group")["split"].nunique()
    report["overlap"] = {"groups": int((crossing > 1).sum())}
    return report


def main() -> None:
    params = load_params()
    table = pd.read_csv(CATALOG, dtype={"group": str})
    table["split"] = assign_splits(table["label"].to_numpy(), table["group"].to_numpy(),
                                   params.split.val, params.split.test, params.seed)
    report = split_table(table, params.classes)
    if report["overlap"]["groups"]:
        raise SystemExit(f"split: {report['overlap']['groups']} groups cross splits")
    write_csv(OUT, table)
    write_json(METRICS, report)
    print("split: " + ", ".join(f"{s} {report[s]['n']} ({report[s]['per_class']})"
                                for s in SPLITS))


if __name__ == "__main__":
    main()
