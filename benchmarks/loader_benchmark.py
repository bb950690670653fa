"""Benchmark of prepared arrays against decoding files; writes benchmarks/results/loader.json.

    python benchmarks/loader_benchmark.py [--mri ../shared/datasets/brain-tumor-mri]

One epoch at 224 px with the training augmentations, through the same DataLoader
settings (batch 32, the same workers), once from the prepare stage's uint8 array and once
decoding the image files; the ratio of the two speeds is the point.
"""

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from medimg.data.prepared import prepare_image
from medimg.docs import results_file
from medimg.params import AugmentParams
from medimg.training.datasets import ArrayDataset, FileDataset, train_transform

REPO = Path(__file__).resolve().parents[1]


def epoch_rate(dataset: Dataset, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    seen = sum(len(labels) for _, labels in loader)
    return seen / (time.perf_counter() - start)


def loader_markdown(root: Path) -> str:
    bench = results_file(root, "loader.json")
    return "\n".join([
        "| source | images/s | workers | images | prepare once (s) |",
        "|---|---|---|---|---|",
        f"| prepared uint8 array | {bench['arrays_images_per_s']} | {bench['workers']} | "
        f"{bench['images']} | {bench['prepare_seconds']} |",
        f"| decoding the JPEG files | {bench['files_images_per_s']} | {bench['workers']} | "
        f"{bench['images']} | |",
        "",
        f"Speed-up from the arrays: {bench['speedup']}x on {bench['machine']['cpus']} cores.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mri", type=Path,
                        default=REPO.parent / "shared" / "datasets" / "brain-tumor-mri")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/loader.json")
    args = parser.parse_args()
    if not args.mri.is_dir():
        raise SystemExit(f"--mri: folder {args.mri} does not exist")
    with (REPO / "params.yaml").open() as handle:
        augment = AugmentParams(**yaml.safe_load(handle)["train"]["augment"])
    paths = sorted(args.mri.rglob("*.jpg"))
    labels = np.zeros(len(paths), dtype=np.int64)
    transform = train_transform(args.size, augment, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        array_path = Path(folder) / "train.npy"
        start = time.perf_counter()
        array = np.lib.format.open_memmap(array_path, mode="w+", dtype=np.uint8,
                                          shape=(len(paths), args.size, args.size, 3))
        work = partial(prepare_image, size=args.size, policy="squash")
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            for index, pixels in enumerate(pool.map(work, paths, chunksize=16)):
                array[index] = pixels
        array.flush()
        del array
        prepare_seconds = time.perf_counter() - start
        from_arrays = epoch_rate(ArrayDataset(array_path, labels, transform), args.workers)
        from_files = epoch_rate(FileDataset(paths, labels, args.size, "squash", transform),
                                args.workers)
    results = {
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                    "torch": torch.__version__},
        "images": len(paths), "size": args.size, "workers": args.workers, "batch_size": 32,
        "prepare_seconds": round(prepare_seconds, 2),
        "arrays_images_per_s": round(from_arrays, 1),
        "files_images_per_s": round(from_files, 1),
        "speedup": round(from_arrays / from_files, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
