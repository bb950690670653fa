"""Write the README's results section from the metrics files, so no figure is typed by hand.

    python scripts/results_table.py          # rewrite the section in README.md
    python scripts/results_table.py --check  # exit 1 if README.md is out of date
"""

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load(root: Path, name: str) -> dict:
    with (root / "metrics" / name).open(encoding="utf-8") as handle:
        return json.load(handle)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def results_markdown(root: Path) -> str:
    evaluate, dedup, split = (load(root, n) for n in ("evaluate.json", "dedup.json", "split.json"))
    best = load(root, "train/metrics.json")["best"]
    lines = [
        f"Data: {dedup['found']} images found, {dedup['kept']} kept after de-duplication; "
        f"split train {split['train']['n']} / val {split['val']['n']} / "
        f"test {split['test']['n']} images ({split['train']['groups']} / "
        f"{split['val']['groups']} / {split['test']['groups']} groups). "
        f"Best epoch {best['epoch']} (val F1 {best['val_f1']:.4f}).",
        "",
        "| split | n | accuracy | macro F1 | ROC-AUC |",
        "|---|---|---|---|---|",
    ]
    for name in ("val", "test"):
        row = evaluate[name]
        lines.append(f"| {name} | {row['n']} | {fmt(row['accuracy'])} | "
                     f"{fmt(row['f1_macro'])} | {fmt(row['roc_auc'])} |")
    return "\n".join(lines)


def with_results(readme: str, table: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    readme_path = args.root / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    updated = with_results(readme, results_markdown(args.root))
    if args.check:
        if updated != readme:
            print("README.md results are out of date: run python scripts/results_table.py")
            return 1
        return 0
    readme_path.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
