"""PyTorch eager against ONNX Runtime on the CPU; writes benchmarks/results/inference.json.

    python benchmarks/inference_benchmark.py [--model tf_efficientnet_lite0] [--size 128]

Both run the same weights in the same process: images per second at batch 32, and p50 and
p95 latency at batch 1, after warm-up runs.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

from export import export_onnx  # noqa: E402
from medimg.inference import ONNX_NAME, OnnxBackend, TorchBackend  # noqa: E402
from medimg.models import create_model, normalisation, save_checkpoint  # noqa: E402
from medimg.params import load_params  # noqa: E402


def figures(run: Callable[[np.ndarray], np.ndarray], size: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    batch = rng.normal(0, 1, (32, 3, size, size)).astype(np.float32)
    single = batch[:1]
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


def main() -> None:
    defaults = load_params(REPO / "params.yaml")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults.model.name)
    parser.add_argument("--size", type=int, default=defaults.prepare.image_size)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/inference.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = create_model(args.model, "none", 2)
        save_checkpoint(folder, model, {"model": args.model, "classes": ["a", "b"],
                                        "image_size": args.size, "resize": "squash",
                                        **normalisation(model)})
        eager = TorchBackend(folder)
        export_onnx(eager, folder / ONNX_NAME, opset=18)
        runtime = OnnxBackend(folder)
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
