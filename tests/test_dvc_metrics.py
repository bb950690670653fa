"""What `dvc metrics show` and `dvc exp show` display: the committed headline figures, few
enough to compare experiments on one screen, each equal to its figure in metrics/report/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

BUDGET = 30  # numbers in all DVC metrics files together
WIDTH = 200  # columns of a wide terminal


def declared_metrics() -> list[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in stages.values():
        for entry in stage.get("metrics", []):
            paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


def numbers(node: object) -> int:
    if isinstance(node, dict):
        return sum(numbers(value) for value in node.values())
    if isinstance(node, list):
        return sum(numbers(value) for value in node)
    return int(isinstance(node, int | float) and not isinstance(node, bool))


def read(name: str) -> dict:
    return json.loads((REPO / name).read_text())


def test_dvc_metrics_stay_within_the_budget() -> None:
    counts = {path: numbers(read(path)) for path in declared_metrics()}
    assert set(counts) == {"metrics/dedup.json", "metrics/split.json", "metrics/train.json",
                           "metrics/evaluate.json"}
    assert sum(counts.values()) <= BUDGET, counts


def test_dvc_metrics_show_fits_a_wide_terminal() -> None:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=REPO,
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "PATH": path})
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(declared_metrics())
    assert max(map(len, lines)) <= WIDTH, max(lines, key=len)


def test_headline_figures_are_the_report_figures_rounded() -> None:
    test = read("metrics/report/report.json")["metrics"]["test"]
    assert read("metrics/evaluate.json") == {
        short: round(test[name], 4)
        for short, name in (("acc", "accuracy"), ("acc_low", "accuracy_low"),
                            ("acc_high", "accuracy_high"), ("bal_acc", "balanced_accuracy"),
                            ("f1", "f1_macro"), ("f1_low", "f1_macro_low"),
                            ("f1_high", "f1_macro_high"), ("auc", "roc_auc"),
                            ("auc_low", "roc_auc_low"), ("auc_high", "roc_auc_high"),
                            ("ece", "ece"))}
    dedup, split = read("metrics/report/dedup.json"), read("metrics/report/split.json")
    assert read("metrics/dedup.json") == {"found": dedup["found"], "kept": dedup["kept"]}
    assert read("metrics/split.json") == {name: split[name]["n"] for name in ("train", "val",
                                                                             "test")}
    train = read("metrics/report/train.json")
    assert read("metrics/train.json") == {"best_epoch": train["best_epoch"],
                                          train["monitor"]: round(train["best_value"], 4)}
