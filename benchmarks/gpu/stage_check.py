"""The real train stage on a GPU, in a scratch workspace, with the checks of issue 18.

    python benchmarks/gpu/stage_check.py --pack DIR [--prepared data/prepared]
    python benchmarks/gpu/stage_check.py --inputs DIR --out OUT [--epochs 4] [--compile]
        [--workers N] [--name NAME]                           # on the GPU machine

`--pack` stores the prepare stage's outputs of the default sample (the three uint8 arrays,
compressed, and their CSVs) in DIR, small enough to travel to a GPU machine. There the
check builds a workspace from the repository's params.yaml with `train.device: cuda` and
`train.epochs` (the frozen epochs of params.yaml included), runs the `pretrained` stage
(its output must have the hash dvc.lock records) and the `train` stage as `dvc repro`
would, and writes OUT/NAME.json:

- the stage's exit code, seconds and the last lines of its log (OUT/NAME.log in full);
- the epochs dvclive logged, and whether its GPU figures (`gpu/peak_allocated_gb`,
  `gpu/<i>/utilization_percent`, `gpu/<i>/memory_used_gb`) are in metrics.json and in the
  per-epoch plots;
- the checkpoint loaded on the CPU, as evaluate and export load it, and its test-split
  probabilities there against the same weights on the GPU in fp32 and in bf16 +
  channels_last: largest difference and whether the labels agree (the CPU probabilities
  are in the file, for checking on another machine);
- on CUDA, `rank_zero_decides` over a one-process NCCL group (a CPU tensor fails there).

The checkpoint itself is copied to OUT/NAME.safetensors and OUT/NAME.model.json.
"""

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from medimg.docs import results_file
from medimg.inference import Classifier, TorchBackend, load_classifier
from medimg.params import flatten
from medimg.training.models import ModelConfig, packaged_weights

REPO = Path(__file__).resolve().parents[2]
STAGE_FILE = "cuda_train_stage.json"  # OUT/stage_check.json, saved in benchmarks/results

SPLITS = ("train", "val", "test")
# PyTorch's peak, then what dvclive's system monitor reads from NVML.
GPU_KEYS = ("gpu/peak_allocated_gb", "system/gpu/usage (%)/0", "system/vram/usage (GB)/0")


def pack(folder: Path, prepared: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "prepared.npz",
                        **{name: np.load(prepared / f"{name}.npy") for name in SPLITS})
    for name in SPLITS:
        shutil.copy(prepared / f"{name}.csv", folder / f"{name}.csv")
    print(f"packed {prepared} into {folder}")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def locked_md5(path: str) -> str | None:
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == path:
                return out["md5"]
    return None


def workspace(work: Path, inputs: Path, args: argparse.Namespace) -> None:
    if work.exists():
        shutil.rmtree(work)
    prepared = work / "data" / "prepared"
    prepared.mkdir(parents=True)
    with np.load(inputs / "prepared.npz") as arrays:
        for name in SPLITS:
            np.save(prepared / f"{name}.npy", arrays[name])
            shutil.copy(inputs / f"{name}.csv", prepared / f"{name}.csv")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(device=args.device, epochs=args.epochs, compile=args.compile,
                           num_workers=args.workers)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(name: str, work: Path, log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"=== stage {name}\n")
        handle.flush()
        done = subprocess.run([sys.executable, str(REPO / "stages" / f"{name}.py")], cwd=work,
                              stdout=handle, stderr=subprocess.STDOUT, check=False)
    return done.returncode, round(time.perf_counter() - start, 1)


def dvclive_figures(work: Path) -> dict:
    live = work / "metrics" / "train"
    metrics = flatten(json.loads((live / "metrics.json").read_text()), separator="/")
    plots = live / "plots" / "metrics"
    steps = {key: len(pd.read_csv(plots / f"{key}.tsv", sep="\t"))
             for key in ("train/loss", *GPU_KEYS, "data_wait_share")
             if (plots / f"{key}.tsv").is_file()}
    return {"metrics": metrics, "rows_per_plot": steps,
            "gpu_metrics_present": all(key in metrics for key in GPU_KEYS),
            "gpu_plots_present": all(key in steps for key in GPU_KEYS)}


def predictions(work: Path, device: torch.device) -> dict:
    """The saved checkpoint's test probabilities on the CPU and on `device`."""
    classifier = load_classifier(work / "models")  # on the CPU, as evaluate loads it
    pixels = np.load(work / "data" / "prepared" / "test.npy")
    cpu = classifier.predict(pixels, len(pixels))
    result = {"n": len(cpu), "cpu_probabilities": cpu[:, 1].round(6).tolist()}
    if device.type == "cpu":
        return result
    model = classifier.backend.model
    for name, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        model.to(memory_format=torch.channels_last if bf16 else torch.contiguous_format)
        on_device = Classifier(TorchBackend(model, device, bf16),
                               classifier.config).predict(pixels, len(pixels))
        result[f"{device.type}_{name}"] = {
            "max_abs_probability_difference": float(np.abs(on_device - cpu).max()),
            "labels_identical": bool((on_device.argmax(1) == cpu.argmax(1)).all())}
    return result


NCCL_CHECK = """
import os, torch, torch.distributed as dist
from medimg.devices import rank_zero_decides
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
torch.cuda.set_device(0)
dist.init_process_group("nccl", rank=0, world_size=1)
try:
    dist.broadcast(torch.tensor([1]), src=0)
    cpu_tensor = "accepted"
except Exception as err:
    cpu_tensor = type(err).__name__ + ": " + str(err).splitlines()[0][:200]
print("cpu tensor:", cpu_tensor)
print("rank_zero_decides(True):", rank_zero_decides(True))
print("rank_zero_decides(False):", rank_zero_decides(False))
dist.destroy_process_group()
"""


def nccl_check() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO / "stages"), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-c", NCCL_CHECK], capture_output=True,
                              text=True, timeout=120, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "output": "timed out after 120 s"}
    return {"returncode": done.returncode,
            "output": (done.stdout + done.stderr).strip().splitlines()[-6:]}


def check(args: argparse.Namespace) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{args.name}.log"
    log.write_text("")
    workspace(args.work, args.inputs, args)
    result: dict = {"command": shlex.join(["python3", "benchmarks/gpu/stage_check.py",
                                           *sys.argv[1:]]),
                    "device": args.device, "epochs": args.epochs, "compile": args.compile,
                    "num_workers": args.workers, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    code, seconds = run_stage("pretrained", args.work, log)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    converted = packaged_weights(params["model"]["name"])
    weights = args.work / converted
    result["pretrained"] = {"returncode": code, "seconds": seconds,
                            "md5": md5(weights) if weights.is_file() else None,
                            "dvc_lock_md5": locked_md5(str(converted))}
    code, seconds = run_stage("train", args.work, log)
    result["train"] = {"returncode": code, "seconds": seconds,
                       "log_tail": log.read_text(errors="replace").splitlines()[-25:]}
    if code == 0:
        result["dvclive"] = dvclive_figures(args.work)
        config = ModelConfig.load(args.work / "models")
        result["checkpoint"] = {"train_device": config.train["device"],
                                "best_epoch": config.best_epoch,
                                "md5": md5(args.work / "models" / "model.safetensors")}
        result["predictions"] = predictions(args.work, torch.device(args.device))
        shutil.copy(args.work / "models" / "model.safetensors",
                    args.out / f"{args.name}.safetensors")
        shutil.copy(args.work / "models" / "model.json", args.out / f"{args.name}.model.json")
    if args.device == "cuda" and args.nccl:
        result["nccl_rank_zero_decides"] = nccl_check()
    return result


def stage_check_markdown(root: Path) -> str:
    """The real train stage on a GPU, from cuda_train_stage.json (empty before a GPU run)."""
    if not (root / "benchmarks/results" / STAGE_FILE).is_file():
        return ""
    stage = results_file(root, STAGE_FILE)
    live, prediction = stage["dvclive"], stage["predictions"]
    fp32 = prediction[f"{stage['device']}_fp32"]
    bf16 = prediction[f"{stage['device']}_bf16_channels_last"]
    gpu = [key for key in live["metrics"] if key.startswith("gpu/")]
    every = all(live["rows_per_plot"].get(key) == stage["epochs"] for key in gpu)
    same = fp32["labels_identical"] and bf16["labels_identical"]
    return (f"The train stage itself on the {stage['gpu']} (`train.device: "
            f"{stage['device']}`, {stage['epochs']} epochs, default sample; "
            f"`cuda_train_stage.json`): exit {stage['train']['returncode']}, dvclive logged "
            f"{', '.join(f'`{key}`' for key in gpu)} "
            f"{'in every epoch' if every else 'in some epochs only'}; the checkpoint loaded on the "
            f"CPU gives the {prediction['n']} test probabilities within "
            f"{fp32['max_abs_probability_difference']:.1e} of the same weights on the GPU in "
            f"fp32 and {bf16['max_abs_probability_difference']:.1e} in bf16, labels "
            f"{'identical' if same else 'DIFFERENT'}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, help="write the inputs to this folder and stop")
    parser.add_argument("--prepared", type=Path, default=REPO / "data" / "prepared",
                        help="with --pack: the prepare stage's output folder")
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medimg_stage"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name", default="stage_check")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--nccl", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if args.pack:
        pack(args.pack, args.prepared)
        return
    if args.inputs is None or args.out is None:
        parser.error("--inputs and --out are needed (or --pack)")
    result = check(args)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = {key: result[key] for key in ("pretrained",) if key in result}
    summary["train"] = {k: v for k, v in result["train"].items() if k != "log_tail"}
    for key in ("checkpoint", "nccl_rank_zero_decides"):
        if key in result:
            summary[key] = result[key]
    if "dvclive" in result:
        summary["gpu_metrics_present"] = result["dvclive"]["gpu_metrics_present"]
        summary["gpu_plots_present"] = result["dvclive"]["gpu_plots_present"]
        summary["predictions"] = {k: v for k, v in result["predictions"].items()
                                  if k != "cpu_probabilities"}
    print(json.dumps(summary, indent=1), flush=True)
    if result["train"]["returncode"] != 0:
        print("\n".join(result["train"]["log_tail"]), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
