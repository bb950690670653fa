"""Write the README's result sections from the metrics and benchmark files, so no figure
is typed by hand.

    python scripts/results_table.py          # rewrite the section in README.md
    python scripts/results_table.py --check  # exit 1 if README.md is out of date
"""

import argparse
import json
import sys
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
DEDUP_BEGIN, DEDUP_END = "<!-- dedup-benchmark:begin -->", "<!-- dedup-benchmark:end -->"


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


def dedup_markdown(root: Path) -> str:
    with (root / "benchmarks" / "results" / "dedup.json").open(encoding="utf-8") as handle:
        bench = json.load(handle)
    mri, pngs, index = bench["brain_tumor_mri"], bench["generated_pngs"], bench["near_index"]
    counts = mri["dedup_metrics"]
    lines = [
        "| found | kept | exact | pixel | near | label conflicts | rejected | ignored |",
        "|---|---|---|---|---|---|---|---|",
        "| " + " | ".join(str(counts[key]) for key in (
            "found", "kept", "exact_duplicates", "pixel_duplicates", "near_duplicates",
            "conflicts", "rejected", "ignored")) + " |",
        "",
        f"Speed on {bench['machine']['cpus']} cores (`benchmarks/dedup_benchmark.py`, "
        "whole stage including process start):",
        "",
        "| input | files | stage seconds | stage images/s | plain MD5 loop images/s |",
        "|---|---|---|---|---|",
    ]
    for name, row in (("Brain Tumor MRI set", mri), ("generated 50x50 PNGs", pngs)):
        lines.append(f"| {name} | {row['files']} | {row['stage_seconds']} | "
                     f"{row['stage_images_per_s']} | {row['md5_loop_images_per_s']} |")
    lines += ["", f"Near-duplicate index: {index['hashes']:,} random 64-bit hashes with "
              f"{index['planted_pairs']} planted pairs within {index['max_distance']} bits: "
              f"{index['seconds']} s, {index['planted_missed']} planted pairs missed."]
    return "\n".join(lines)


def with_section(readme: str, begin: str, end: str, body: str) -> str:
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def with_results(readme: str, root: Path) -> str:
    readme = with_section(readme, BEGIN, END, results_markdown(root))
    return with_section(readme, DEDUP_BEGIN, DEDUP_END, dedup_markdown(root))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    readme_path = args.root / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    updated = with_results(readme, args.root)
    if args.check:
        if updated != readme:
            print("README.md results are out of date: run python scripts/results_table.py")
            return 1
        return 0
    readme_path.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
