"""DVC on a large raw folder; writes benchmarks/results/dvc.json.

    python benchmarks/dvc_benchmark.py [--files 100000]

In a scratch copy of the project: generate a raw folder of small PNGs (two classes),
`dvc add` it with linked (not copied) cache files, run the real dedup stage on it once,
then time `dvc status`, a no-op `dvc repro dedup`, `dvc push` to a local-folder remote and
`dvc pull` into a fresh clone.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from medimg.docs import results_file

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


def timed(args: list[str], cwd: Path) -> float:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    start = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PATH": path})
    return round(time.perf_counter() - start, 2)


def project_copy(target: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)


def generate(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        target = folder / ("a" if index % 2 else "b") / f"{index:06d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((50, 50), Image.Resampling.NEAREST).save(target)


def dvc_markdown(root: Path) -> str:
    bench = results_file(root, "dvc.json")
    steps = (("dvc add", "dvc_add_seconds"),
             ("dvc repro dedup (first run)", "repro_dedup_seconds"),
             ("dvc status", "status_seconds"),
             ("dvc repro (nothing to do)", "noop_repro_seconds"),
             ("dvc push (local remote)", "push_seconds"),
             ("dvc pull (fresh clone)", "pull_seconds"))
    lines = [f"{bench['files']:,} files, {bench['cpus']} cores:", "",
             "| command | seconds |", "|---|---|"]
    lines += [f"| `{label}` | {bench[key]} |" for label, key in steps]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/dvc.json")
    args = parser.parse_args()
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        work = root / "project"
        project_copy(work)
        params = yaml.safe_load((work / "params.yaml").read_text())
        params["classes"] = ["a", "b"]
        params["data"].update(raw_dir="data/raw", groups_file=None)
        params["dedup"]["similarity"] = "off"
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        start = time.perf_counter()
        generate(work / "data/raw", args.files)
        results = {"files": args.files, "cpus": os.cpu_count(),
                   "generate_seconds": round(time.perf_counter() - start, 2)}
        subprocess.run([*git, "init", "-q"], cwd=work, check=True)
        timed([*DVC, "config", "cache.type", "reflink,hardlink,symlink,copy"], work)
        results["dvc_add_seconds"] = timed([*DVC, "add", "-q", "data/raw"], work)
        results["repro_dedup_seconds"] = timed([*DVC, "repro", "-s", "dedup"], work)
        results["status_seconds"] = timed([*DVC, "status", "dedup"], work)
        results["noop_repro_seconds"] = timed([*DVC, "repro", "dedup"], work)
        timed([*DVC, "remote", "add", "-d", "store", str(root / "remote")], work)
        subprocess.run([*git, "add", "-A"], cwd=work, check=True)
        subprocess.run([*git, "commit", "-qm", "raw"], cwd=work, check=True)
        results["push_seconds"] = timed([*DVC, "push", "data/raw.dvc", "dedup"], work)
        clone = root / "clone"
        subprocess.run([*git, "clone", "-q", str(work), str(clone)], check=True)
        timed([*DVC, "config", "cache.type", "reflink,hardlink,symlink,copy"], clone)
        results["pull_seconds"] = timed([*DVC, "pull", "data/raw.dvc", "dedup"], clone)
        pulled = sum(1 for _ in (clone / "data/raw").rglob("*.png"))
        results["pulled_files_match"] = pulled == args.files
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
