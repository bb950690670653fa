import json
from pathlib import Path

import pytest

from benchmarks.real.experiments import experiments_markdown
from benchmarks.real.leakage import LEAKAGE_FILE, decoded, leakage
from benchmarks.real.run import real_runs, real_table_markdown
from conftest import CHROMIUM, LOCK_CPU, METRIC_TOLERANCE, OOD_TOLERANCE, SHIFT_TOLERANCE
from medimg.docs import markers, results_file, with_section
from medimg.evaluation.headline import headline_markdown
from medimg.evaluation.metrics import macro_f1

BEGIN, END = markers("results")
REAL_TABLE_BEGIN, REAL_TABLE_END = markers("real-table")
EXPERIMENTS_BEGIN, EXPERIMENTS_END = markers("task-b-experiments")
README_LIMIT = 12 * 1024
RUN_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt"
               " && dvc repro")
TEST_COMMAND = "bash scripts/test.sh"


def test_readme_is_at_most_12_kib(repo: Path) -> None:
    size = len((repo / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail to docs/"


def test_readme_shows_the_two_commands_as_code_blocks(repo: Path) -> None:
    readme = (repo / "README.md").read_text()
    for command in (RUN_COMMAND, TEST_COMMAND):
        assert f"```bash\n{command}\n```" in readme


def test_ci_runs_exactly_the_readmes_test_command(repo: Path) -> None:
    command = (repo / ".ci/run").read_text().strip().splitlines()[-1]
    assert f"```bash\n{command}\n```" in (repo / "README.md").read_text()


def test_the_test_command_does_its_own_set_up(repo: Path) -> None:
    # A fresh machine has no browser: the script installs the one the page test drives,
    # a virtual environment with the pinned requirements, then runs both test runs.
    script = (repo / "scripts/test.sh").read_text()
    assert f"[ ! -x {CHROMIUM} ]" in script and "apt-get install -y -q chromium" in script
    assert "pip install -r requirements.txt" in script
    lines = script.splitlines()
    assert lines[-2:] == ["python -m pytest", 'python -m pytest -m "e2e or dvc_features or slow"']


def test_the_reproducibility_claim_is_what_the_e2e_tests_check(repo: Path) -> None:
    vendor = {"AuthenticAMD": "an AMD EPYC", "GenuineIntel": "an Intel Xeon"}[LOCK_CPU[0]]
    extensions = "AVX-512 and AMX" if "amx_tile" in LOCK_CPU[1] else "AVX-512"
    tolerances = (f"within {METRIC_TOLERANCE} of the committed ones, the shift report's AUC "
                  f"within {SHIFT_TOLERANCE}, the out-of-distribution shares within "
                  f"{OOD_TOLERANCE}")
    readme, docs = (" ".join((repo / name).read_text().split())
                    for name in ("README.md", "docs/pipeline.md"))
    assert f"the CPU class that wrote the lock ({vendor} with {extensions})" in readme
    assert "on any x86_64 CPU with AVX2" in readme and "| any x86_64 CPU with AVX2." in docs
    assert tolerances in readme
    assert (f"within {METRIC_TOLERANCE} of the committed ones, the shift report's AUC "
            f"(`shift_auc`) within {SHIFT_TOLERANCE}, the out-of-distribution shares within "
            f"{OOD_TOLERANCE}") in docs
    assert "avx512f" in LOCK_CPU[1]


def test_readme_results_match_the_committed_metrics(repo: Path) -> None:
    readme = (repo / "README.md").read_text()
    assert f"{BEGIN}\n{headline_markdown(repo)}\n{END}" in readme
    assert f"{REAL_TABLE_BEGIN}\n{real_table_markdown(repo)}\n{REAL_TABLE_END}" in readme
    assert f"{EXPERIMENTS_BEGIN}\n{experiments_markdown(repo)}\n{EXPERIMENTS_END}" in readme


def test_results_section_is_replaced_in_place() -> None:
    readme = f"intro\n{BEGIN}\nold figures\n{END}\noutro\n"
    assert with_section(readme, BEGIN, END, "| new |") == f"intro\n{BEGIN}\n| new |\n{END}\noutro\n"


@pytest.mark.parametrize("text", ["no markers", f"{END}\n{BEGIN}", f"{BEGIN}{END}{BEGIN}{END}"])
def test_a_missing_or_misplaced_marker_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="results:begin"):
        with_section(text, BEGIN, END, "| new |")


def test_real_results_decode_to_their_own_metrics(repo: Path) -> None:
    for path in sorted((repo / "benchmarks/results").glob("real_*.json")):
        run = json.loads(path.read_text())
        labels, predicted, _ = decoded(run)
        test = run["evaluate"]["test"]
        assert len(labels) == test["n"]
        assert (labels == predicted).mean() == pytest.approx(test["accuracy"])
        assert macro_f1(labels, predicted) == pytest.approx(test["f1_macro"])


def test_leakage_file_holds_the_statistics_of_the_run_files(repo: Path) -> None:
    assert results_file(repo, LEAKAGE_FILE) == leakage(real_runs(repo))
