"""What `dvc metrics show` and `dvc exp show` display: the committed headline figures, few
enough to compare experiments on one screen (that each equals its figure in the cached
reports of metrics/report/ is checked end to end, in tests/pipeline/test_e2e.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

BUDGET = 30  # numbers in all DVC metrics files together
WIDTH = 240  # columns of a wide terminal


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
