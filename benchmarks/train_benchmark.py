"""Training throughput of the real training loop; writes benchmarks/results/train_<device>.json.

    python benchmarks/train_benchmark.py                        # CPU, default model and size
    python benchmarks/train_benchmark.py --device cuda --model efficientnet_b0 --size 224

Runs `Loop.fit` (full fine-tuning, training augmentations, prepared uint8 arrays) for a
warm-up epoch and a measured epoch per configuration. On CUDA the configurations are
fp32, bf16 + channels_last, and bf16 + channels_last + torch.compile, with peak memory and
the NVML figures dvclive logs.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

from medimg.data import ArrayDataset, eval_transform, train_transform  # noqa: E402
from medimg.devices import resolve_device  # noqa: E402
from medimg.models import create_model, normalisation  # noqa: E402
from medimg.params import load_params  # noqa: E402
from medimg.training import EpochLog, Loop, seed_everything  # noqa: E402

CUDA_CONFIGS = {
    "fp32": {"bf16": False, "channels_last": False, "compile": False},
    "bf16_channels_last": {"bf16": True, "channels_last": True, "compile": False},
    "bf16_channels_last_compile": {"bf16": True, "channels_last": True, "compile": True},
}


def measure(args: argparse.Namespace, folder: Path, config: dict) -> dict:
    params = load_params(REPO / "params.yaml")
    train = params.train.model_copy(update={
        "epochs": 2, "freeze_epochs": 0, "patience": 10, "device": args.device,
        "batch_size": args.batch_size, "num_workers": args.workers, **config})
    seed_everything(0, deterministic=False)
    model = create_model(args.model, "none", 2)
    norm = normalisation(model)
    labels = np.arange(args.images) % 2
    train_set = ArrayDataset(folder / "train.npy", labels,
                             train_transform(args.size, **norm, aug=train.augment, seed=0))
    val_set = ArrayDataset(folder / "val.npy", labels[:64], eval_transform(**norm))
    loop = Loop(model, train_set, val_set, train, seed=0, num_classes=2,
                device=resolve_device(args.device))
    logs: list[EpochLog] = []
    loop.fit(on_epoch=logs.append)
    last = logs[-1]  # the first epoch pays for warm-up and compilation
    return {"images_per_second": round(last.images_per_second, 1),
            "epoch_seconds": round(last.seconds, 2),
            **{key: round(value, 3) for key, value in last.gpu.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = load_params(REPO / "params.yaml")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--model", default=defaults.model.name)
    parser.add_argument("--size", type=int, default=defaults.prepare.image_size)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=defaults.train.batch_size)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    out = args.out or REPO / "benchmarks" / "results" / f"train_{args.device}.json"
    configs = CUDA_CONFIGS if args.device == "cuda" else {"fp32": {}}
    rng = np.random.default_rng(0)
    results = {"machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                           "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
               "model": args.model, "size": args.size, "images": args.images,
               "batch_size": args.batch_size, "workers": args.workers, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, count in (("train", args.images), ("val", 64)):
            np.save(folder / f"{name}.npy",
                    rng.integers(0, 256, (count, args.size, args.size, 3), dtype=np.uint8))
        for name, config in configs.items():
            results["runs"][name] = measure(args, folder, config)
            print(name, results["runs"][name], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
