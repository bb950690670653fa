"""What leakage was worth on the real data: each leakage-controlled run beside its leaky
twin, and task A beside the original notebook.

    python -m benchmarks.real.leakage    # after benchmarks/real/run.py

Reads benchmarks/results/real_*.json and writes benchmarks/results/leakage.json with the
statistics docs/real-data.md shows, so that the renderer below only formats them:

- for each task whose two runs exist, leaky minus controlled test accuracy and macro F1,
  with 95% intervals from resampling both test sets within each true class;
- in the leaky run, accuracy on the test images with and without a copy on the training
  side, with Wilson intervals;
- the original notebook's test accuracy with its Wilson interval.
"""

import argparse
from pathlib import Path

import numpy as np

from benchmarks.real.run import real_runs, removed
from medimg.docs import fmt, interval, results_file
from medimg.evaluation.metrics import accuracy, macro_f1
from medimg.evaluation.scores import difference_interval, wilson_interval
from medimg.io import write_json

REPO = Path(__file__).resolve().parents[2]
LEAKAGE_FILE = "leakage.json"
COMMAND = "python -m benchmarks.real.leakage"
RESAMPLES, SEED = 2000, 0
METRICS = {"accuracy": ("test accuracy", accuracy), "f1_macro": ("test macro F1", macro_f1)}
# The original notebook's reported figures (see ../shared/research/data-and-weights.md).
ORIGINAL = {"images": "3,264 MRI + 10,000 histopathology", "test_n": 1955, "test_errors": 0}
# Task: (baseline run, leaky run, what differs).
COMPARISONS = {
    "A": ("a_original", "a_original_leaky", "no de-duplication and no patient groups"),
    "B": ("b_tumours_clean", "b_tumours_leaky", "de-duplication and leakage removal off"),
    "C": ("c_idc_patient", "c_idc_patch", "patch-level instead of patient-level split"),
}


def decoded(run: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test labels, predictions and has-a-copy flags from a results file's digit strings."""
    found = run["test_predictions"]
    return tuple(np.array([int(c) for c in found[key]], dtype=np.int64)
                 for key in ("label", "predicted", "has_copy_outside_test"))


def share_right(right: int, n: int) -> dict:
    """RIGHT of N as an accuracy with its Wilson interval."""
    low, high = wilson_interval(right, n)
    return {"right": right, "n": n, "accuracy": right / max(n, 1), "low": low, "high": high}


def comparison(base: dict, leaky: dict) -> dict:
    """The leaky run against the controlled one: metric differences, and the leaky run's
    accuracy split by whether a test image has a copy on the training side."""
    first, second = decoded(base)[:2], decoded(leaky)[:2]
    differences = {}
    for key, (_, metric) in METRICS.items():
        value, (low, high) = difference_interval(first, second, metric, RESAMPLES, seed=SEED)
        differences[key] = {"value": value, "low": low, "high": high}
    labels, predicted, copied = decoded(leaky)
    by_copy = {name: share_right(int((labels[mask] == predicted[mask]).sum()), int(mask.sum()))
               for name, mask in (("with", copied == 1), ("without", copied == 0))}
    return {"controlled": base["run"], "leaky": leaky["run"],
            "leaky_minus_controlled": differences,
            "leaky_accuracy_by_copy": by_copy if copied.any() else None}


def leakage(runs: dict[str, dict]) -> dict:
    """Every comparison the runs allow, and the original notebook's interval."""
    n, errors = ORIGINAL["test_n"], ORIGINAL["test_errors"]
    return {"command": COMMAND, "resamples": RESAMPLES, "seed": SEED,
            "original": {**ORIGINAL, "test_accuracy": share_right(n - errors, n)},
            "tasks": {task: {"change": change, **comparison(runs[base], runs[leaky])}
                      for task, (base, leaky, change) in COMPARISONS.items()
                      if base in runs and leaky in runs}}


def original_table(run: dict, original: dict) -> list[str]:
    test, split = run["evaluate"]["test"], run["split"]
    shortcut, notebook = run["evaluate"]["shortcut"], original["test_accuracy"]
    per_split = " / ".join(
        f"{split[s]['n']} ({', '.join(f'{v} {c}' for c, v in split[s]['per_class'].items())})"
        for s in ("train", "val", "test"))
    return [
        "| | original notebook | this pipeline (`a_original`) |", "|---|---|---|",
        f"| images | {original['images']} | {run['dedup']['found']} "
        f"({', '.join(f'{c}' for c in run['params']['classes'])}) |",
        f"| de-duplication | MD5 only | {run['dedup']['kept']} kept; exact / pixel / near / "
        f"conflict removed: {removed(run['dedup'])} |",
        "| split (train / val / test) | 70 / 15 / 15, random | "
        f"{per_split}; whole patients and similarity groups |",
        f"| test accuracy (95% CI) | {notebook['accuracy']:.4f} ({notebook['low']:.4f} to "
        f"{notebook['high']:.4f}), n {notebook['n']} | {interval(test, 'accuracy')}, "
        f"n {test['n']} |",
        f"| test macro F1 (95% CI) | not reported | {interval(test, 'f1_macro')} |",
        "| logistic regression on colour statistics + size / on size alone | not run | "
        f"{fmt(shortcut['image_statistics']['accuracy'])} / "
        f"{fmt(shortcut['size_only']['accuracy'])} |",
    ]


def worth(label: str, difference: dict) -> str:
    """'inflated test accuracy by +1.2 points (95% CI ...)' and the like."""
    value, low, high = difference["value"], difference["low"], difference["high"]
    verdict = "inflated" if low > 0 else "lowered" if high < 0 else "changed"
    return (f"{verdict} {label} by {100 * value:+.1f} points (95% CI {100 * low:+.1f} to "
            f"{100 * high:+.1f}" + (": no measurable change)" if low <= 0 <= high else ")"))


def leakage_lines(task: str, compared: dict, base: dict, leaky: dict) -> list[str]:
    lines = [f"**Task {task}** ({compared['change']}; `{base['run']}` vs `{leaky['run']}`, "
             "same model and budget):", "",
             "| metric | leakage controlled | leaky | leaky minus controlled (95% CI) |",
             "|---|---|---|---|"]
    differences = compared["leaky_minus_controlled"]
    for key, (label, _) in METRICS.items():
        value, low, high = (differences[key][k] for k in ("value", "low", "high"))
        lines.append(f"| {label} | {interval(base['evaluate']['test'], key)} | "
                     f"{interval(leaky['evaluate']['test'], key)} | "
                     f"{value:+.4f} ({low:+.4f} to {high:+.4f}) |")
    said = [worth(label, differences[key]) for key, (label, _) in METRICS.items()]
    lines += ["", f"What leakage was worth on task {task}: it {said[0]}, and {said[1]}."]
    by_copy = compared["leaky_accuracy_by_copy"]
    if by_copy is not None:
        parts = [f"{row['accuracy']:.4f} ({row['low']:.4f} to {row['high']:.4f}) on the "
                 f"{row['n']} test images {name} a copy on the training side"
                 for name, row in by_copy.items()]
        lines.append(f"In the leaky run, accuracy was {parts[0]}, and {parts[1]}.")
    if "patients" in leaky and "patients" in base:
        shared = [f"{run['patients']['test_also_in_train_or_val']} of its "
                  f"{run['patients']['test']} test patients" for run in (leaky, base)]
        lines.append(f"The leaky split had {shared[0]} with images in train or val too; the "
                     f"controlled split {shared[1]}.")
    leaks = leaky["split"].get("leaks")
    if leaks is not None:
        lines.append(f"The leaky split had {leaks['pairs']} cross-split leaks (file, pixel or "
                     f"near copies); {leaks['test_images_with_copy']} of "
                     f"{leaky['split']['test']['n']} test images had a copy in train or val.")
    return lines


def leakage_markdown(root: Path) -> str:
    """Task A beside the original study, then what leakage was worth on each task."""
    if not (root / "benchmarks/results" / LEAKAGE_FILE).is_file():
        return f"No results file yet: run `{COMMAND}` after `benchmarks/real/run.py`."
    found, runs = results_file(root, LEAKAGE_FILE), real_runs(root)
    blocks = []
    if "a_original" in runs:
        blocks.append(["**Task A**, the original study beside ours:", "",
                       *original_table(runs["a_original"], found["original"])])
    for task, compared in found["tasks"].items():
        blocks.append(leakage_lines(task, compared, runs[compared["controlled"]],
                                    runs[compared["leaky"]]))
    return "\n\n".join("\n".join(block) for block in blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="repository root")
    args = parser.parse_args()
    out = args.root / "benchmarks/results" / LEAKAGE_FILE
    write_json(out, leakage(real_runs(args.root)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
