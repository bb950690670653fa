"""Benchmark of the dedup stage; writes its figures to benchmarks/results/dedup.json.

    python benchmarks/dedup_benchmark.py [--mri ../shared/datasets/brain-tumor-mri]

Measures, in one run on this machine: the whole dedup stage (process start included) on
the Brain Tumor MRI set and on 20,000 generated small PNGs, each beside a plain
single-process MD5 loop over the same files; the near-duplicate index on 300,000 random
64-bit hashes with planted near pairs, checking that every planted pair is found; and the
split report of the MRI set with its own Testing folder kept (split.respect_existing).
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

from medimg.perceptual import near_pairs  # noqa: E402

MRI_CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


def md5_loop(files: list[Path]) -> float:
    """Images per second of the original study's de-duplication: MD5 of the bytes."""
    start = time.perf_counter()
    for path in files:
        with path.open("rb") as handle:
            hashlib.md5(handle.read()).hexdigest()
    return len(files) / (time.perf_counter() - start)


def run_stages(raw_dir: Path, classes: list[str], class_level: int, stages: list[str],
               respect_existing: str | None = None) -> tuple[float, dict]:
    """Wall time of running the stage scripts on raw_dir in a scratch folder, and the
    metrics of the last one."""
    with (REPO / "params.yaml").open() as handle:
        params = yaml.safe_load(handle)
    params["classes"] = classes
    params["data"] = {"raw_dir": str(raw_dir), "class_level": class_level,
                      "groups_file": None, "group_regex": None}
    params["split"]["respect_existing"] = respect_existing
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "params.yaml").write_text(yaml.safe_dump(params))
        start = time.perf_counter()
        for stage in stages:
            subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=work,
                           check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        metrics = json.loads((Path(work) / "metrics" / f"{stages[-1]}.json").read_text())
    return seconds, metrics


def stage_figures(raw_dir: Path, classes: list[str], class_level: int) -> dict:
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file())
    md5_rate = md5_loop(files)
    seconds, metrics = run_stages(raw_dir, classes, class_level, ["dedup"])
    return {
        "files": len(files),
        "stage_seconds": round(seconds, 2),
        "stage_images_per_s": round(len(files) / seconds, 1),
        "md5_loop_images_per_s": round(md5_rate, 1),
        "dedup_metrics": metrics,
    }


def generate_pngs(folder: Path, count: int) -> None:
    """Small RGB PNGs in two classes, with some exact copies among them."""
    rng = np.random.default_rng(0)
    for index in range(count):
        target = folder / ("a" if index % 2 else "b") / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        if index % 50 == 49:
            target.write_bytes((folder / "a" / f"{index - 2:05d}.png").read_bytes())
            continue
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((50, 50), Image.Resampling.BILINEAR).save(target)


def index_figures(count: int, planted: int, max_distance: int) -> dict:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**64, count, dtype=np.uint64, endpoint=False)
    chosen = rng.permutation(count)[:2 * planted].reshape(planted, 2)
    for source, target in chosen:
        flips = rng.choice(64, rng.integers(0, max_distance + 1), replace=False)
        hashes[target] = hashes[source] ^ np.uint64(sum(1 << int(bit) for bit in flips))
    start = time.perf_counter()
    first, second = near_pairs(hashes, max_distance)
    seconds = time.perf_counter() - start
    found = set(zip(first.tolist(), second.tolist(), strict=True))
    missed = sum((min(a, b), max(a, b)) not in found for a, b in chosen.tolist())
    return {"hashes": count, "planted_pairs": planted, "max_distance": max_distance,
            "seconds": round(seconds, 2), "pairs_found": len(found), "planted_missed": missed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mri", type=Path,
                        default=REPO.parent / "shared" / "datasets" / "brain-tumor-mri")
    parser.add_argument("--pngs", type=int, default=20_000)
    parser.add_argument("--hashes", type=int, default=300_000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/dedup.json")
    args = parser.parse_args()
    if not args.mri.is_dir():
        raise SystemExit(f"--mri: folder {args.mri} does not exist")
    with (REPO / "params.yaml").open() as handle:
        near_hamming = yaml.safe_load(handle)["dedup"]["near_hamming"]
    results = {
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "brain_tumor_mri": stage_figures(args.mri, MRI_CLASSES, class_level=2),
    }
    with tempfile.TemporaryDirectory() as folder:
        generate_pngs(Path(folder), args.pngs)
        results["generated_pngs"] = stage_figures(Path(folder), ["a", "b"], class_level=1)
    results["near_index"] = index_figures(args.hashes, planted=1000, max_distance=near_hamming)
    _, split = run_stages(args.mri, MRI_CLASSES, 2, ["dedup", "split"], "Testing")
    results["brain_tumor_mri_respect_existing"] = split
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
