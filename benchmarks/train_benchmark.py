"""Training throughput of the real training loop; writes benchmarks/results/train_<device>.json.

    python benchmarks/train_benchmark.py                        # CPU, default model and size
    python benchmarks/train_benchmark.py --device cuda --model efficientnet_b0 --size 224
    python benchmarks/train_benchmark.py --device cuda --model efficientnet_b0 \\
        tf_efficientnet_lite0 --size 224 --batch-size 256 --workers 15

Runs `Trainer.fit` (full fine-tuning, training augmentations in loader processes, prepared
uint8 arrays of random pixels) for a warm-up epoch and a measured epoch per model and
configuration, and reports the measured epoch: images per second, the share of its time
the loop stood waiting for the loader (`data_wait_share`), and on CUDA peak memory and the
NVML figures dvclive logs. On CUDA the configurations are fp32, bf16 + channels_last, and
bf16 + channels_last + torch.compile, and each is followed by two measurements with the
same model, optimiser and (compiled) module that show what limits the loop:

- `gpu_augment_images_per_second`: one epoch of the loop's own step on batches augmented
  on the GPU (medimg/training/gpu_augment.py) from uint8 images resident on the device, so no
  loader process is involved;
- `gpu_only_images_per_second`: the step repeated on one augmented batch already on the
  device: the GPU's own ceiling for this model, configuration and batch.

The GPU-side augmentation is measured for the bf16 configurations only. Also on CUDA: the
loader alone at several worker counts (what the CPUs can feed), and for the first model in
bf16 + channels_last the GPU-only ceiling at other batch sizes and with
`torch.backends.cudnn.benchmark`. The file is rewritten after every measurement, so a run
cut short keeps what it measured.
"""

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from medimg.devices import resolve_device
from medimg.docs import blank, results_file
from medimg.params import load_params
from medimg.training.datasets import ArrayDataset, train_transform
from medimg.training.models import create_model, normalisation
from medimg.training.trainer import (
    EpochLog,
    Trainer,
    seed_everything,
    seed_worker,
    set_backbone_frozen,
    train_mode,
)

REPO = Path(__file__).resolve().parents[1]

CUDA_CONFIGS = {
    "fp32": {"bf16": False, "channels_last": False, "compile": False},
    "bf16_channels_last": {"bf16": True, "channels_last": True, "compile": False},
    "bf16_channels_last_compile": {"bf16": True, "channels_last": True, "compile": True},
}
EAGER_EXTRAS = "bf16_channels_last"  # the configuration that gets the batch and cuDNN sweeps
VAL_IMAGES = 64


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_loop(args: argparse.Namespace, model_name: str, folder: Path, config: dict) -> Trainer:
    params = load_params(REPO / "params.yaml")
    train = params.train.model_copy(update={
        "epochs": 2, "freeze_epochs": 0, "patience": 10, "device": args.device,
        "deterministic": False, "batch_size": args.batch_size, "num_workers": args.workers,
        **config})
    seed_everything(0, deterministic=False)
    model = create_model(model_name, "none", 2)
    labels = np.arange(args.images) % 2
    train_set = ArrayDataset(folder / "train.npy", labels,
                             train_transform(args.size, train.augment, seed=0))
    val_set = ArrayDataset(folder / "val.npy", labels[:VAL_IMAGES])
    return Trainer(model, train_set, val_set, train, seed=0, num_classes=2,
                device=resolve_device(args.device))


def input_layout(loop: Trainer) -> torch.memory_format:
    """The layout the loop's step gives its input (channels_last on CUDA only)."""
    cuda_last = loop.device.type == "cuda" and loop.params.channels_last
    return torch.channels_last if cuda_last else torch.contiguous_format


def step_rate(loop: Trainer, module: torch.nn.Module, images: torch.Tensor,
              labels: torch.Tensor, steps: int, warmup: int = 3) -> float:
    """Images per second of the loop's own step repeated on one batch on the device."""
    for _ in range(warmup):
        loop.train_step(module, images, labels)
    synchronize(loop.device)
    start = time.perf_counter()
    for _ in range(steps):
        loop.train_step(module, images, labels)
    synchronize(loop.device)
    return steps * len(labels) / (time.perf_counter() - start)


def gpu_augment_rate(loop: Trainer, module: torch.nn.Module, pixels: torch.Tensor,
                     labels: torch.Tensor, size: int) -> float:
    """Images per second of one epoch of the loop's step on batches augmented on the GPU
    from the uint8 images in `pixels` (resident on the device)."""
    from medimg.training.gpu_augment import GpuAugment

    batch = loop.params.batch_size
    layout = input_layout(loop)
    augment = GpuAugment(size, **normalisation(loop.model), aug=loop.params.augment,
                         device=loop.device)

    def step(index: torch.Tensor) -> None:
        images = augment(pixels[index]).contiguous(memory_format=layout)
        loop.train_step(module, images, labels[index])

    for first in range(0, 3 * batch, batch):  # warm-up
        step(torch.arange(first, first + batch, device=loop.device))
    synchronize(loop.device)
    start = time.perf_counter()
    order = torch.randperm(len(labels), device=loop.device)
    steps = len(labels) // batch
    for first in range(0, steps * batch, batch):
        step(order[first:first + batch])
    synchronize(loop.device)
    return steps * batch / (time.perf_counter() - start)


def stop_workers(loop: Trainer) -> None:
    """End the loop's persistent loader processes, so that they neither prefetch during the
    measurements that follow nor pile up across configurations."""
    for loader in (loop.train_loader, loop.val_loader):
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None


def measure(args: argparse.Namespace, model_name: str, folder: Path, name: str,
            config: dict, pixels: torch.Tensor | None) -> dict:
    """The real loop's figures for one model and configuration; on CUDA the GPU-side
    augmentation and GPU-only figures too (`pixels`: the training images, pinned)."""
    loop = make_loop(args, model_name, folder, config)
    logs: list[EpochLog] = []
    loop.fit(on_epoch=logs.append)
    stop_workers(loop)
    last = logs[-1]  # the first epoch pays for warm-up, worker start and compilation
    result = {"model": model_name, "configuration": name, **config,
              "images_per_second": round(last.images_per_second, 1),
              "epoch_seconds": round(last.seconds, 2),
              "data_wait_share": round(last.data_wait_share, 4),
              "data_wait_seconds": round(last.data_wait_seconds, 3),
              "first_batch_wait_seconds": round(loop.first_batch_seconds, 3),
              "warmup_epoch_seconds": round(logs[0].seconds, 1),
              **{key: round(value, 3) for key, value in last.gpu.items()}}
    if not args.extras:
        return result
    set_backbone_frozen(loop.model, False)
    train_mode(loop.model, False)  # validation left the model in eval mode
    module = loop.forward_model(False)  # the same (compiled) module the epochs ran
    # One augmented batch, made here rather than by the (stopped) loader processes.
    images, labels = default_collate([loop.train_set[i] for i in range(args.batch_size)])
    images = loop.model_input(images)
    labels = labels.to(loop.device)
    result["gpu_only_images_per_second"] = round(
        step_rate(loop, module, images, labels, args.ceiling_steps), 1)
    if pixels is not None and config["bf16"]:  # bf16 only, to save device time
        # The images are on the device only for this measurement: not in the peaks above.
        resident = pixels.to(loop.device)
        resident_labels = torch.as_tensor(loop.train_set.labels, device=loop.device)
        result["gpu_augment_images_per_second"] = round(
            gpu_augment_rate(loop, module, resident, resident_labels, args.size), 1)
        del resident
    if name == EAGER_EXTRAS and model_name == args.model[0]:
        result["gpu_only_by_batch"] = {}
        for batch in args.sweep_batches:
            rng = torch.Generator(device=loop.device).manual_seed(batch)
            swept = torch.randn((batch, 3, args.size, args.size), device=loop.device,
                                generator=rng).contiguous(memory_format=input_layout(loop))
            swept_labels = torch.arange(batch, device=loop.device) % 2
            result["gpu_only_by_batch"][str(batch)] = round(
                step_rate(loop, module, swept, swept_labels, args.ceiling_steps), 1)
            del swept
        before, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
        try:
            result["gpu_only_cudnn_benchmark_images_per_second"] = round(
                step_rate(loop, module, images, labels, args.ceiling_steps, warmup=5), 1)
        finally:
            torch.backends.cudnn.benchmark = before
    return result


def loader_rate(dataset: ArrayDataset, batch: int, workers: int, pin: bool,
                opencv_threads: int | None = None) -> float:
    """Images per second of the loader alone (augmentation, collation, pinning): the second
    of two epochs, so the worker processes are already running. `opencv_threads` limits
    OpenCV's threads (albumentations calls OpenCV) in the worker processes: set in this
    process before they fork, since cv2.setNumThreads in a forked worker can deadlock."""
    import cv2

    before = cv2.getNumThreads()
    if opencv_threads is not None:
        cv2.setNumThreads(opencv_threads)
    try:
        return epoch_rate(DataLoader(
            dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
            pin_memory=pin, persistent_workers=workers > 0,
            worker_init_fn=seed_worker if workers else None))
    finally:
        cv2.setNumThreads(before)


def epoch_rate(loader: DataLoader) -> float:
    for _ in loader:
        pass
    start = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    return count / (time.perf_counter() - start)


def write_inputs(folder: Path, images: int, size: int) -> None:
    """train.npy and val.npy of random pixels; the training array repeats 512 distinct
    images (the augmentations cost the same on any pixels)."""
    rng = np.random.default_rng(0)
    distinct = rng.integers(0, 256, (min(images, 512), size, size, 3), dtype=np.uint8)
    train = np.lib.format.open_memmap(folder / "train.npy", mode="w+", dtype=np.uint8,
                                      shape=(images, size, size, 3))
    for start in range(0, images, len(distinct)):
        stop = min(images, start + len(distinct))
        train[start:stop] = distinct[:stop - start]
    train.flush()
    del train
    np.save(folder / "val.npy", distinct[:VAL_IMAGES])


def machine(device: str) -> dict:
    info = {"cpus": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "gpu": None}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(), gpu_memory_gib=round(
            props.total_memory / 2**30, 1), cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


CONFIGURATIONS = {"fp32": "fp32", "bf16_channels_last": "bf16 + channels_last",
                  "bf16_channels_last_compile": "bf16 + channels_last + torch.compile"}


def train_runs(bench: dict) -> list[dict]:
    """The runs of a train benchmark file: a list with the model in each run, or (older
    files) a dict by configuration with one model for the file."""
    if isinstance(bench["runs"], dict):
        return [{"model": bench["model"], "configuration": name, **run}
                for name, run in bench["runs"].items()]
    return bench["runs"]


def train_limits_markdown(bench: dict) -> list[str]:
    """What limits a CUDA run: the real loop against the same step without the loader
    (GPU-side augmentation) and without any input work (one batch on the device)."""
    gpu, runs = bench["machine"]["gpu"], train_runs(bench)
    lines = ["", f"What limits the loop on the {gpu} (images/s, batch {bench['batch_size']}; "
             f"`gpu_augment` and `gpu_only` in `train_cuda.json`):", "",
             f"| model | configuration | real loop ({bench['workers']} loader processes) | "
             "augmentation on the GPU, no loader | GPU only, one batch on the device |",
             "|---|---|---|---|---|"]
    for run in runs:
        label = CONFIGURATIONS.get(run["configuration"], run["configuration"])
        lines.append(f"| {run['model']} | {label} | {run['images_per_second']} | "
                     f"{blank(run.get('gpu_augment_images_per_second'))} | "
                     f"{blank(run.get('gpu_only_images_per_second'))} |")
    if bench.get("loader"):
        rates = ", ".join(f"{row['images_per_second']} with {row['workers']}"
                          for row in bench["loader"])
        lines += ["", f"The loader alone (albumentations in worker processes, collation, "
                  f"pinned memory; {bench['machine']['cpus']} cores), images/s by worker "
                  f"processes: {rates}."]
    for run in runs:
        if "gpu_only_by_batch" in run:
            swept = {**run["gpu_only_by_batch"],
                     str(bench["batch_size"]): run["gpu_only_images_per_second"]}
            rates = ", ".join(f"{swept[b]} at {b}" for b in sorted(swept, key=int))
            lines += ["", f"GPU only, {run['model']}, "
                      f"{CONFIGURATIONS[run['configuration']]}, images/s by batch size: "
                      f"{rates}; with `torch.backends.cudnn.benchmark` at batch "
                      f"{bench['batch_size']}: "
                      f"{run['gpu_only_cudnn_benchmark_images_per_second']}."]
    return lines


TRAIN_GOAL = ("efficientnet_b0", 224, 5000)  # issue 18: images/s on one GPU


def train_goal_markdown(bench: dict) -> list[str]:
    """The goal of issue 18 against the best real-loop figure, and which measurement says
    what holds the loop back."""
    model, size, goal = TRAIN_GOAL
    runs = [run for run in train_runs(bench) if run["model"] == model]
    if bench["size"] != size or not runs:
        return []
    best = max(runs, key=lambda run: run["images_per_second"])
    label = CONFIGURATIONS.get(best["configuration"], best["configuration"])
    line = (f"Goal: {goal:,} training images/s for {model} at {size} px. Best real loop on "
            f"the {bench['machine']['gpu']}: {best['images_per_second']} ({label}, "
            f"{best['data_wait_share']:.0%} of the epoch waiting for data); "
            f"{'reached' if best['images_per_second'] >= goal else 'not reached'}.")
    loader = max((row["images_per_second"] for row in bench.get("loader", [])), default=None)
    on_gpu = best.get("gpu_augment_images_per_second")
    if loader is not None and on_gpu is not None:
        line += (f" The same step with augmentation on the GPU runs at {on_gpu} and with the "
                 f"batch already on the device at {best['gpu_only_images_per_second']}, while "
                 f"the loader alone delivers at most {loader} images/s: ")
        line += ("the CPU-side augmentation limits the loop." if loader < on_gpu else
                 "the GPU itself limits the loop.")
    return ["", line]


def train_markdown(root: Path) -> str:
    lines = ["| device | model | size | batch | loader processes | configuration | images/s | "
             "waiting for data (first batch) | peak GPU memory (GiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    extra = []
    for path in sorted((root / "benchmarks" / "results").glob("train_*.json")):
        bench = results_file(root, path.name)
        device = bench["machine"]["gpu"] or f"CPU, {bench['machine']['cpus']} cores"
        for run in train_runs(bench):
            wait = run.get("data_wait_share")
            if wait is not None and "first_batch_wait_seconds" in run:
                first = run["first_batch_wait_seconds"] / run["epoch_seconds"]
                wait = f"{wait:.0%} ({first:.0%})"
            elif wait is not None:
                wait = f"{wait:.0%}"
            lines.append(
                f"| {device} | {run['model']} | {bench['size']} | {bench['batch_size']} | "
                f"{bench['workers']} | "
                f"{CONFIGURATIONS.get(run['configuration'], run['configuration'])} | "
                f"{run['images_per_second']} | {blank(wait)} | "
                f"{blank(run.get('gpu/peak_allocated_gb'))} |")
        if bench["machine"]["gpu"]:
            extra += ["", f"`{path.name}`: `{bench['command']}`"]
            extra += train_goal_markdown(bench)
            extra += train_limits_markdown(bench)
    return "\n".join(lines + extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = load_params(REPO / "params.yaml")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--model", nargs="+", default=[defaults.model.name])
    parser.add_argument("--size", type=int, default=defaults.prepare.image_size)
    parser.add_argument("--images", type=int,
                        help="training images per epoch (default: 256; on CUDA 48 batches)")
    parser.add_argument("--batch-size", type=int,
                        help=f"default: {defaults.train.batch_size}; on CUDA 256")
    parser.add_argument("--workers", type=int,
                        help="loader processes (default: 0; on CUDA all cores but one)")
    parser.add_argument("--configs", nargs="+", choices=list(CUDA_CONFIGS),
                        help="CUDA configurations to run (default: all)")
    parser.add_argument("--loader-workers", type=int, nargs="*",
                        help="worker counts for the loader-only measurement (CUDA; default: "
                             "4, 8 and --workers)")
    parser.add_argument("--loader-opencv-threads", type=int, nargs="*", default=[],
                        help="also the loader alone at --workers with OpenCV limited to "
                             "this many threads in each worker process")
    parser.add_argument("--sweep-batches", type=int, nargs="*", default=[128, 512])
    parser.add_argument("--ceiling-steps", type=int, default=20)
    parser.add_argument("--extras", action=argparse.BooleanOptionalAction,
                        help="GPU-side augmentation, GPU-only and loader-only figures "
                             "(default: on CUDA only)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="set torch.backends.cudnn.benchmark for every run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if args.batch_size is None:
        args.batch_size = 256 if cuda else defaults.train.batch_size
    if args.workers is None:
        args.workers = max(1, (os.cpu_count() or 2) - 1) if cuda else 0
    if args.images is None:
        args.images = 48 * args.batch_size if cuda else 256
    if args.extras is None:
        args.extras = cuda
    if args.loader_workers is None:
        args.loader_workers = sorted({4, 8, args.workers}) if args.extras else []
    out = args.out or REPO / "benchmarks" / "results" / f"train_{args.device}.json"
    configs = ({name: CUDA_CONFIGS[name] for name in args.configs or CUDA_CONFIGS}
               if cuda or args.configs else {"fp32": {}})
    results = {"machine": machine(args.device),
               "command": shlex.join(["python", "benchmarks/train_benchmark.py", *sys.argv[1:]]),
               "size": args.size, "images": args.images, "batch_size": args.batch_size,
               "workers": args.workers, "cudnn_benchmark": args.cudnn_benchmark,
               "runs": [], "loader": []}
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_inputs(folder, args.images, args.size)
        pixels = torch.from_numpy(np.load(folder / "train.npy")) if args.extras else None
        if pixels is not None and cuda:
            pixels = pixels.pin_memory()
        for model_name in args.model:
            for name, config in configs.items():
                run = measure(args, model_name, folder, name, config, pixels)
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
                save()
            if model_name == args.model[0] and (args.loader_workers
                                                or args.loader_opencv_threads):
                augment = defaults.train.augment
                dataset = ArrayDataset(folder / "train.npy", np.arange(args.images) % 2,
                                       train_transform(args.size, augment, seed=0))
                variants = [(workers, None) for workers in args.loader_workers]
                variants += [(args.workers, threads) for threads in args.loader_opencv_threads]
                for workers, threads in variants:
                    rate = loader_rate(dataset, args.batch_size, workers, cuda, threads)
                    row = {"workers": workers, "pin_memory": cuda,
                           "images_per_second": round(rate, 1)}
                    if threads is not None:
                        row["opencv_threads_per_worker"] = threads
                    results["loader"].append(row)
                    print(json.dumps(row), flush=True)
                    save()
    save()


if __name__ == "__main__":
    main()
