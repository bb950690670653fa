import subprocess
import sys
from pathlib import Path

from scripts.results_table import BEGIN, END, results_markdown, with_section


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
