"""PyTorch eager against ONNX Runtime on the CPU; writes benchmarks/results/inference.json.

    python benchmarks/inference_benchmark.py [--model tf_efficientnet_lite0] [--size 128]
    python benchmarks/inference_benchmark.py --device cuda --model efficientnet_b0 \
        tf_efficientnet_lite0 --size 224          # writes inference_cuda.json

Both run the same weights in the same process: images per second at batch 32, and p50 and
p95 latency at batch 1, after warm-up runs. On CUDA: images per second at batch 256 (input
already on the device) for PyTorch eager in fp32, eager in bf16 + channels_last, the same
compiled with torch.compile, and ONNX Runtime's CUDA provider where the installed
onnxruntime has it; the file is rewritten after every measurement.
"""

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from medimg.docs import results_file
from medimg.inference import (
    ONNX_NAME,
    Classifier,
    export_onnx,
    load_classifier,
)
from medimg.params import load_params
from medimg.training.models import create_model, normalisation, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
CUDA_FILE = "inference_cuda.json"  # what --device cuda writes, in benchmarks/results


def figures(classifier: Classifier, size: int, repeats: int) -> dict:
    """Throughput at batch 32 and latency at batch 1 of the path predict takes: uint8
    images, normalised, through the backend, to probabilities."""
    images = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)

    def run(batch: np.ndarray) -> np.ndarray:
        return classifier.predict(batch, len(batch))

    batch, single = images, images[:1]
    for _ in range(3):
        run(batch)
        run(single)
    start = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    throughput = 32 * repeats / (time.perf_counter() - start)
    latencies = []
    for _ in range(repeats * 10):
        start = time.perf_counter()
        run(single)
        latencies.append((time.perf_counter() - start) * 1000)
    return {"images_per_second_batch32": round(throughput, 1),
            "latency_ms_p50_batch1": round(float(np.percentile(latencies, 50)), 2),
            "latency_ms_p95_batch1": round(float(np.percentile(latencies, 95)), 2)}


CUDA_CONFIGS = {
    "eager_fp32": {"bf16": False, "channels_last": False, "compile": False},
    "eager_bf16_channels_last": {"bf16": True, "channels_last": True, "compile": False},
    "compiled_bf16_channels_last": {"bf16": True, "channels_last": True, "compile": True},
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_rate(run: Callable[[], torch.Tensor], batch: int, repeats: int,
                device: torch.device) -> float:
    """Images per second of `run` (one batch), timed after warm-up with the device idle."""
    for _ in range(3):
        run()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    synchronize(device)
    return batch * repeats / (time.perf_counter() - start)


def cuda_main(args: argparse.Namespace, device: torch.device) -> None:
    """The CUDA figures (`device` is CUDA but for a smoke test of this code on the CPU)."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    results = {"machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                           "torch": torch.__version__, "gpu": gpu,
                           "onnxruntime": onnxruntime.__version__,
                           "onnxruntime_providers": onnxruntime.get_available_providers()},
               "command": shlex.join(["python", "benchmarks/inference_benchmark.py",
                                      *sys.argv[1:]]),
               "size": args.size, "batch_size": args.batch_size, "repeats": args.repeats,
               "runs": []}

    def save(run: dict) -> None:
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    generator = torch.Generator(device=device).manual_seed(0)
    inputs = torch.randn((args.batch_size, 3, args.size, args.size), device=device,
                         generator=generator)
    for name in args.model:
        model = create_model(name, "none", 2).eval().to(device)
        with torch.inference_mode():
            reference = model(inputs).float()
        for config_name in args.configs or CUDA_CONFIGS:
            config = CUDA_CONFIGS[config_name]
            layout = torch.channels_last if config["channels_last"] else torch.contiguous_format
            module = model.to(memory_format=layout)
            module = torch.compile(module) if config["compile"] else module
            batch = inputs.contiguous(memory_format=layout)

            def run(module: torch.nn.Module = module, batch: torch.Tensor = batch,
                    bf16: bool = config["bf16"]) -> torch.Tensor:
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16,
                                                            enabled=bf16):
                    return module(batch)

            start = time.perf_counter()
            logits = run().float()  # the first call compiles
            first = time.perf_counter() - start
            save({"model": name, "configuration": config_name, **config,
                  "images_per_second": round(
                      device_rate(run, args.batch_size, args.repeats, device), 1),
                  "first_call_seconds": round(first, 1),
                  "max_abs_logit_difference_to_eager_fp32": float(
                      (logits - reference).abs().max())})
        model.to(memory_format=torch.contiguous_format)
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            continue
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            save_checkpoint(folder, model.cpu(), {"model": name, "classes": ["a", "b"],
                                                  "image_size": args.size, "resize": "squash",
                                                  **normalisation(model)})
            export_onnx(load_classifier(folder), folder / ONNX_NAME, opset=18)
            session = onnxruntime.InferenceSession(
                str(folder / ONNX_NAME),
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            host = inputs.cpu().numpy()
            feed = {session.get_inputs()[0].name: host}
            start = time.perf_counter()
            session.run(None, feed)
            first = time.perf_counter() - start
            for _ in range(2):
                session.run(None, feed)
            start = time.perf_counter()
            for _ in range(args.repeats):
                session.run(None, feed)
            rate = args.batch_size * args.repeats / (time.perf_counter() - start)
            save({"model": name, "configuration": "onnxruntime_cuda_fp32",
                  "images_per_second": round(rate, 1), "first_call_seconds": round(first, 1),
                  "note": "input and output copied between host and device on every call"})


INFERENCE_CONFIGURATIONS = {
    "eager_fp32": "PyTorch eager, fp32",
    "eager_bf16_channels_last": "PyTorch eager, bf16 + channels_last",
    "compiled_bf16_channels_last": "torch.compile, bf16 + channels_last",
    "onnxruntime_cuda_fp32": "ONNX Runtime, CUDA provider, fp32 (host input)"}


def inference_markdown(root: Path) -> str:
    bench = results_file(root, "inference.json")
    lines = [f"{bench['model']} at {bench['size']} px, {bench['machine']['cpus']} CPU cores, "
             "one run:", "",
             "| backend | images/s (batch 32) | latency p50 (batch 1, ms) | p95 (ms) |",
             "|---|---|---|---|"]
    for name, label in (("pytorch_eager", "PyTorch eager"), ("onnxruntime", "ONNX Runtime")):
        row = bench[name]
        lines.append(f"| {label} | {row['images_per_second_batch32']} | "
                     f"{row['latency_ms_p50_batch1']} | {row['latency_ms_p95_batch1']} |")
    return "\n".join(lines)


def cuda_markdown(root: Path) -> str:
    """Inference on a GPU, from inference_cuda.json (empty before a GPU run)."""
    if not (root / "benchmarks/results" / CUDA_FILE).is_file():
        return ""
    bench = results_file(root, CUDA_FILE)
    lines = [f"Inference on the {bench['machine']['gpu']}, "
             f"`benchmarks/results/{CUDA_FILE}`, batch {bench['batch_size']} at "
             f"{bench['size']} px, input already on the device:", "",
             "| model | backend | images/s |", "|---|---|---|"]
    for run in bench["runs"]:
        lines.append(f"| {run['model']} | "
                     f"{INFERENCE_CONFIGURATIONS.get(run['configuration'], run['configuration'])}"
                     f" | {run['images_per_second']} |")
    providers = bench["machine"]["onnxruntime_providers"]
    if "CUDAExecutionProvider" not in providers:
        lines += ["", f"ONNX Runtime's CUDA provider: not measured; the onnxruntime "
                  f"{bench['machine']['onnxruntime']} installed there offers "
                  f"{', '.join(providers)}."]
    return "\n".join(lines)


def main() -> None:
    defaults = load_params(REPO / "params.yaml")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", nargs="+", default=[defaults.model.name],
                        help="one model on the CPU; any number on CUDA")
    parser.add_argument("--size", type=int, default=defaults.prepare.image_size)
    parser.add_argument("--repeats", type=int, help="default: 10; on CUDA 30")
    parser.add_argument("--batch-size", type=int, default=256, help="CUDA only")
    parser.add_argument("--configs", nargs="+", choices=list(CUDA_CONFIGS), help="CUDA only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.device == "cuda":
        args.repeats = args.repeats or 30
        args.out = args.out or REPO / "benchmarks/results" / CUDA_FILE
        cuda_main(args, torch.device("cuda"))
        return
    if len(args.model) != 1:
        parser.error("the CPU benchmark takes one --model")
    args.model, args.repeats = args.model[0], args.repeats or 10
    args.out = args.out or REPO / "benchmarks/results/inference.json"
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = create_model(args.model, "none", 2)
        save_checkpoint(folder, model, {"model": args.model, "classes": ["a", "b"],
                                        "image_size": args.size, "resize": "squash",
                                        **normalisation(model)})
        eager = load_classifier(folder)
        export_onnx(eager, folder / ONNX_NAME, opset=18)
        runtime = load_classifier(folder, "onnx")
        results = {
            "machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                        "torch_threads": torch.get_num_threads()},
            "model": args.model, "size": args.size,
            "pytorch_eager": figures(eager, args.size, args.repeats),
            "onnxruntime": figures(runtime, args.size, args.repeats),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
