"""Aggregate finished DVC experiments (seeds, folds) into one result with error bars.

    for seed in 1 2 3; do dvc exp run --queue -S seed=$seed; done && dvc queue start
    python scripts/aggregate_experiments.py [--where KEY=VALUE ...] [--out FILE.json]

Reads `dvc exp show --json` (or `--input FILE`), takes every experiment whose params
match each `--where` (e.g. `--where split.folds=5`), and gives per headline test metric
the mean, standard deviation and range across runs, and a 95% interval for the recipe's
mean score that adds the two sources of error: training (the spread across runs, with a
t quantile) and test sampling (each run's own interval, which repeated runs on the same
test set do not shrink). Experiments that failed, are still queued or lack the test
metrics are counted and named, not silently dropped.
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from medimg.evaluation.scores import HEADLINE, HIGH, LOW
from medimg.io import write_json
from medimg.params import flatten

METRICS_FILE = "metrics/evaluate.json"
PARAMS_FILE = "params.yaml"


def experiment_records(shown: list[dict]) -> tuple[list[dict], list[dict]]:
    """The experiments under each baseline commit of `dvc exp show --json`, as
    {name, rev, params, metrics}, and those without test metrics as {name, rev, reason}."""
    records, skipped = [], []
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for run in experiment["revs"]:
                name = run.get("name") or experiment.get("name") or run["rev"][:7]
                data = run.get("data") or {}
                metrics = ((data.get("metrics") or {}).get(METRICS_FILE) or {}).get("data")
                if run.get("error") or not metrics:
                    reason = (run.get("error") or {}).get("msg") if run.get("error") else (
                        "no test metrics (queued, running or failed)")
                    skipped.append({"name": name, "rev": run["rev"], "reason": reason})
                    continue
                params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
                records.append({"name": name, "rev": run["rev"], "params": flatten(params),
                                "metrics": metrics})
    return records, skipped


def parse_where(conditions: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs, VALUE read as YAML would (1e-3, true, null, text)."""
    where = {}
    for condition in conditions:
        key, sep, value = condition.partition("=")
        if not sep or not key:
            raise SystemExit(f"--where {condition!r}: expected KEY=VALUE, e.g. split.folds=5")
        where[key] = yaml.safe_load(value)
    return where


def select(records: list[dict], where: dict[str, object]) -> list[dict]:
    for key in where:
        if records and not any(key in record["params"] for record in records):
            raise SystemExit(f"--where: no experiment has a param '{key}'")
    return [r for r in records if all(r["params"].get(k) == v for k, v in where.items())]


def summarise(values: list[float], test_half_widths: list[float]) -> dict:
    """Mean, spread and a 95% interval of the mean score over runs on one test set.

    Training error: the runs' standard deviation over sqrt(n), with Student's t for n - 1
    degrees of freedom. Test sampling error: the runs' mean 95% half-width, which stays
    whole because every run is scored on the same test images. The two half-widths add in
    quadrature (independent errors). With one run, or runs without intervals, what cannot
    be known is None."""
    n = len(values)
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if n > 1 else None
    training = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if sd is not None else None
    testing = float(np.mean(test_half_widths)) if test_half_widths else None
    half = (math.sqrt(training**2 + testing**2)
            if training is not None and testing is not None else None)
    return {"n": n, "mean": mean, "sd": sd, "min": float(min(values)),
            "max": float(max(values)), "training_half_width": training,
            "test_half_width": testing, "low": None if half is None else mean - half,
            "high": None if half is None else mean + half}


def aggregate(records: list[dict]) -> dict[str, dict]:
    """summarise() for each headline test metric the records have."""
    result = {}
    for short in HEADLINE:
        runs = [r["metrics"] for r in records if r["metrics"].get(short) is not None]
        if not runs:
            continue
        widths = [(run[short + HIGH] - run[short + LOW]) / 2 for run in runs
                  if run.get(short + LOW) is not None and run.get(short + HIGH) is not None]
        result[short] = summarise([run[short] for run in runs], widths)
    return result


def markdown(summary: dict[str, dict]) -> str:
    lines = ["| metric | runs | mean | sd | range | 95% interval (training + test) |",
             "|---|---|---|---|---|---|"]
    for name, row in summary.items():
        interval = "n/a" if row["low"] is None else f"{row['low']:.4f} to {row['high']:.4f}"
        sd = "n/a" if row["sd"] is None else f"{row['sd']:.4f}"
        lines.append(f"| {name} | {row['n']} | {row['mean']:.4f} | {sd} | "
                     f"{row['min']:.4f} to {row['max']:.4f} | {interval} |")
    return "\n".join(lines)


def exp_show() -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"dvc exp show --json failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only experiments with this param value (repeatable)")
    parser.add_argument("--input", type=Path, help="saved `dvc exp show --json` output")
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    shown = json.loads(args.input.read_text()) if args.input else exp_show()
    records, skipped = experiment_records(shown)
    chosen = select(records, parse_where(args.where))
    for run in skipped:
        print(f"aggregate: skipped {run['name']}: {run['reason']}", file=sys.stderr)
    if not chosen:
        raise SystemExit("aggregate: no finished experiment matches")
    summary = aggregate(chosen)
    print(markdown(summary))
    if args.out:
        write_json(args.out, {"where": args.where, "experiments": [
            {"name": r["name"], "rev": r["rev"], "metrics": r["metrics"]} for r in chosen],
            "skipped": skipped, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
