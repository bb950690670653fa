"""Comparing two experiments, as a new user would: in a fresh clone, `dvc repro`, one
experiment with another learning rate, then the README's `dvc exp show` command and
`dvc metrics show`, each with its widest line. Writes benchmarks/results/exp_show.json,
from which the README's example output is generated.

    python benchmarks/exp_show.py [--set train.lr=1e-3]
"""

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from medimg.docs import results_file
from medimg.io import write_json

REPO = Path(__file__).resolve().parents[1]

DVC = [sys.executable, "-m", "dvc"]
COMMAND = ["exp", "show", "--only-changed"]
COLUMNS = 240  # a wide terminal; rich cuts columns (…) that do not fit


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "COLUMNS": str(COLUMNS),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return result.stdout


def widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def exp_show_markdown(root: Path) -> str:
    shown = results_file(root, "exp_show.json")
    return "\n".join([
        f"```bash\n{shown['experiment']}\n{shown['command']}\n```", "",
        f"In a fresh clone ({shown['date']}; `benchmarks/exp_show.py`), "
        f"{shown['exp_show_widest_line']} columns:", "", "```",
        "\n".join(line.rstrip() for line in shown["exp_show"].splitlines()), "```"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="train.lr=1e-3", help="the experiment's -S value")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/exp_show.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        run(["git", "clone", "-q", str(REPO), str(clone)], Path(tmp))
        run([*DVC, "repro"], clone)
        run([*DVC, "exp", "run", "-S", args.set], clone)
        shown = run([*DVC, *COMMAND, "--no-pager"], clone)
        metrics = run([*DVC, "metrics", "show"], clone)
        commit = run(["git", "rev-parse", "--short", "HEAD"], clone).strip()
    write_json(args.out, {
        "command": f"dvc {' '.join(COMMAND)}",
        "experiment": f"dvc exp run -S {args.set}",
        "columns": COLUMNS,
        "exp_show": shown.rstrip("\n"),
        "exp_show_widest_line": widest(shown),
        "exp_show_cut_columns": "…" in shown,
        "metrics_show": metrics.rstrip("\n"),
        "metrics_show_widest_line": widest(metrics),
        "commit": commit,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    })
    print(f"exp show: widest line {widest(shown)}; metrics show: {widest(metrics)}")


if __name__ == "__main__":
    main()
