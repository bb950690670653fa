import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from scripts.results_table import BEGIN, END, decoded, macro_f1, results_markdown, with_section


def test_ci_runs_exactly_the_readmes_test_command(repo: Path) -> None:
    command = (repo / ".ci/run").read_text().strip().splitlines()[-1]
    assert command.endswith("python -m pytest")
    assert f"```bash\n{command}\n```" in (repo / "README.md").read_text()


def test_readme_results_match_the_committed_metrics(repo: Path) -> None:
    result = subprocess.run([sys.executable, str(repo / "scripts/results_table.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
    table = results_markdown(repo)
    assert f"{BEGIN}\n{table}\n{END}" in (repo / "README.md").read_text()


def test_results_section_is_replaced_in_place() -> None:
    readme = f"intro\n{BEGIN}\nold figures\n{END}\noutro\n"
    assert with_section(readme, BEGIN, END, "| new |") == f"intro\n{BEGIN}\n| new |\n{END}\noutro\n"


def test_fast_macro_f1_equals_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        classes, n = rng.integers(2, 5), rng.integers(3, 40)
        labels, predicted = rng.integers(0, classes, n), rng.integers(0, classes, n)
        assert macro_f1(labels, predicted) == pytest.approx(
            f1_score(labels, predicted, average="macro", zero_division=0), abs=1e-12)


def test_real_results_decode_to_their_own_metrics(repo: Path) -> None:
    for path in sorted((repo / "benchmarks/results").glob("real_*.json")):
        run = json.loads(path.read_text())
        labels, predicted, _ = decoded(run)
        test = run["evaluate"]["test"]
        assert len(labels) == test["n"]
        assert (labels == predicted).mean() == pytest.approx(test["accuracy"])
        assert macro_f1(labels, predicted) == pytest.approx(test["f1_macro"])
