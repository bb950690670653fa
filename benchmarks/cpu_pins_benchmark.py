"""What each CPU kernel pin of `medimg.devices.reproducible_cpu`, and OpenCV's
(`medimg.OPENCV_PINS`), changes and costs.

Runs the real train stage (`stages/train.py`, default params) in a scratch copy of the
workspace, once with every pin and once with each kernel family left to pick its code by
the CPU, repeated and interleaved so that machine noise falls on every variant alike. For
each run: the train stage's wall time, its training seconds and the md5 of the weights.
Then one run on each code path a CPU may be given (IPP's SSE4.2, AVX2 and AVX-512 paths;
OpenCV's own code without AVX-512).

Then, on a CPU that is not Intel's and where a C compiler is at hand, the cross-vendor
check: MKL picks its code path by CPU
vendor, and a two-line shim loaded with LD_PRELOAD answers MKL's "is this an Intel CPU?"
with yes, so that this machine's real hardware runs the branches an Intel CPU would run
(AVX-512, or AVX2 with MKL_ENABLE_INSTRUCTIONS=AVX2). With `--qemu`, a few training steps
also run under qemu-x86_64 as an Intel Haswell and an AMD EPYC-Rome (emulated CPUs:
vendor, caches and instruction sets all change; qemu's arithmetic is not the hardware's,
so these are compared with each other only).

Needs the default pipeline's prepared data and converted weights (`dvc repro prepare
pretrained`). Writes benchmarks/results/cpu_pins.json.

    python benchmarks/cpu_pins_benchmark.py [--repeats 2] [--qemu]
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medimg import OPENCV_PINS
from medimg.devices import CPU_PINS, cpuinfo
from medimg.docs import results_file
from medimg.io import write_json

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks/results/cpu_pins.json"
NEEDED = ["data/prepared", "models/pretrained"]
# MKL asks these two functions whether the CPU is Intel's; the shim says yes.
INTEL_SHIM = ("int mkl_serv_intel_cpu_true(void) { return 1; }\n"
              "int mkl_serv_intel_cpu(void) { return 1; }\n")
QEMU_CPUS = ("Haswell", "EPYC-Rome")
# OpenCV's own AVX-512 code, switched off, as on a CPU with AVX2 only.
OPENCV_AVX512 = "AVX512_SKX,AVX512_COMMON,AVX512_ICL,AVX512_CLX,AVX512_CNL,AVX512_KNL,AVX512_KNM"
# The code paths a CPU may be given, one run each: where two paths give the same weights,
# CPUs that get either agree.
DISPATCH_LEVELS = {
    "IPP on, its SSE4.2 path": {"OPENCV_IPP": "sse42"},
    "IPP on, its AVX2 path": {"OPENCV_IPP": "avx2"},
    "IPP on, its AVX-512 path": {"OPENCV_IPP": "avx512"},
    "IPP off, OpenCV's own code without AVX-512": {"OPENCV_CPU_DISABLE": OPENCV_AVX512},
}
# A few training steps of the default model, for the qemu runs (the whole stage would take
# hours under emulation). Prints the md5 of the weights after them.
PROBE = """
import hashlib, sys
import numpy as np, torch
from medimg.devices import reproducible_cpu
from medimg.training.models import create_model
reproducible_cpu(2)
torch.manual_seed(0)
torch.use_deterministic_algorithms(True, warn_only=True)
model = create_model("tf_efficientnet_lite0", "packaged", 2)
x = torch.from_numpy(np.load("data/prepared/train.npy")[:16]).permute(0, 3, 1, 2)
x = (x.float() / 255 - 0.5) / 0.5
y = torch.tensor([[0.0], [1.0]] * 8)
optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
model.train()
for _ in range(3):
    optimiser.zero_grad()
    torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    optimiser.step()
digest = hashlib.md5()
for value in model.state_dict().values():
    digest.update(value.contiguous().numpy().tobytes())
print(digest.hexdigest())
"""


def workspace(scratch: Path) -> Path:
    """A copy of what the train stage reads: code and params copied, data linked."""
    for name in NEEDED:
        if not (ROOT / name).is_dir():
            raise SystemExit(f"{ROOT / name} is missing: run `dvc repro prepare pretrained`")
    shutil.copytree(ROOT / "stages", scratch / "stages")
    shutil.copy2(ROOT / "params.yaml", scratch / "params.yaml")
    for name in NEEDED:
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).symlink_to(ROOT / name)
    return scratch


def natural_aten_capability() -> str:
    """The vectorised kernels PyTorch picks on this CPU when nothing caps them."""
    env = {key: value for key, value in os.environ.items() if key != "ATEN_CPU_CAPABILITY"}
    return subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu."
                           "get_cpu_capability().lower())"], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def intel_shim(scratch: Path) -> Path | None:
    """The LD_PRELOAD library that makes MKL take its Intel branches; None without cc."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source, library = scratch / "intel_shim.c", scratch / "libintel_shim.so"
    source.write_text(INTEL_SHIM)
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source)],
                   check=True)
    return library


def train_once(work: Path, overrides: dict[str, str]) -> dict:
    """The train stage once, with these environment variables set; its time and weights."""
    shutil.rmtree(work / "models/last", ignore_errors=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "stages/train.py"], cwd=work,
                            env={**os.environ, **overrides}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"train stage failed with {overrides}:\n{result.stderr[-2000:]}")
    report = json.loads((work / "metrics/report/train.json").read_text())
    weights = (work / "models/model.safetensors").read_bytes()
    return {"seconds": round(seconds, 1), "training_seconds": report["training_seconds"],
            "md5": hashlib.md5(weights).hexdigest(), "cpu": report["cpu"]}


def probe_under_qemu(work: Path, cpu: str, overrides: dict[str, str]) -> str:
    result = subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", PROBE],
                            cwd=work, env={**os.environ, **overrides}, capture_output=True,
                            text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"probe under qemu ({cpu}) failed:\n{result.stderr[-2000:]}")
    return result.stdout.split()[-1]


def summarise(runs: list[dict], reference: str) -> dict:
    seconds = [run["seconds"] for run in runs]
    return {"runs": runs, "mean_seconds": round(sum(seconds) / len(seconds), 1),
            "md5": sorted({run["md5"] for run in runs}),
            "same_weights_as_all_pins": all(run["md5"] == reference for run in runs)}


def add_pin_costs(native: dict) -> None:
    """What the pins a variant leaves out cost: its time with them minus without them."""
    for name, row in native.items():
        if name != "all pins":
            row["pin_costs_seconds"] = round(native["all pins"]["mean_seconds"]
                                             - row["mean_seconds"], 1)


def pinned_variant(name: str, unpinned: dict) -> str:
    """'all but MKL_CBWR' -> 'all but MKL's (`MKL_CBWR=` unset)', in words."""
    if not name.startswith("all but "):
        return name
    variable = name.removeprefix("all but ")
    return f"all but `{variable}` (`{variable}={unpinned[variable]}`)"


def cpu_pins_markdown(root: Path) -> str:
    bench = results_file(root, "cpu_pins.json")
    machine = bench["machine"]
    reference = bench["native"]["all pins"]["md5"][0]
    lines = [f"`{bench['command']}` on an {machine['model']} ({machine['vendor']}; AVX-512 "
             f"{'yes' if machine['avx512f'] else 'no'}; {machine['cores']} cores; PyTorch's "
             f"kernels left alone pick `{machine['natural_aten_capability']}`): the train "
             f"stage, default params, {bench['repeats']} runs of each variant, interleaved.",
             "", "| kernels | train stage, s (mean) | the pin costs, s | weights md5 | "
             "same weights as with all pins |", "|---|---|---|---|---|"]
    for name, row in bench["native"].items():
        cost = row.get("pin_costs_seconds")
        lines.append(f"| {pinned_variant(name, bench['unpinned'])} | {row['mean_seconds']} | "
                     f"{'' if cost is None else f'{cost:+.1f}'} | "
                     f"{', '.join(md5[:8] for md5 in row['md5'])} | "
                     f"{'yes' if row['same_weights_as_all_pins'] else 'no'} |")
    lines += ["", "The code paths a CPU may be given, one run each:", "",
              "| code path | weights md5 | same weights as with all pins |", "|---|---|---|"]
    lines += [f"| {name} | {row['md5'][0][:8]} | "
              f"{'yes' if row['same_weights_as_all_pins'] else 'no'} |"
              for name, row in bench["dispatch_levels"].items()]
    if bench["intel_mkl_branches"]:
        lines += ["", f"MKL's Intel branches on the same hardware ({bench['intel_mkl_note']}):",
                  "", "| MKL branch | weights md5 | same weights as with all pins |",
                  "|---|---|---|"]
        lines += [f"| {name} | {row['md5'][0][:8]} | "
                  f"{'yes' if row['same_weights_as_all_pins'] else 'no'} |"
                  for name, row in bench["intel_mkl_branches"].items()]
    if bench["qemu_probe"]:
        lines += ["", "Three training steps under qemu-x86_64 (emulated CPUs, compared with "
                  "each other only), md5 of the weights after them:", "",
                  "| emulated CPU, kernels | md5 |", "|---|---|"]
        lines += [f"| {name} | {md5[:8]} |" for name, md5 in bench["qemu_probe"].items()]
    lines += ["", f"Weights with all pins: `{reference}`; whole run "
              f"{bench['wall_seconds'] / 60:.0f} minutes."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--qemu", action="store_true",
                        help="also run a few training steps under qemu-x86_64")
    args = parser.parse_args()
    started = time.perf_counter()
    natural = natural_aten_capability()
    unpinned = {"ONEDNN_MAX_CPU_ISA": "ALL", "ATEN_CPU_CAPABILITY": natural, "MKL_CBWR": "",
                "OPENCV_IPP": ""}
    pins = {**CPU_PINS, **OPENCV_PINS}
    variants = {"all pins": {},
                **{f"all but {name}": {name: unpinned[name]} for name in pins},
                "no pins": unpinned}
    with tempfile.TemporaryDirectory() as scratch_dir:
        work = workspace(Path(scratch_dir))
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for repeat in range(args.repeats):
            for name, overrides in variants.items():
                runs[name].append(train_once(work, overrides))
                print(f"{repeat} {name}: {runs[name][-1]['seconds']} s "
                      f"{runs[name][-1]['md5']}", flush=True)
        reference = runs["all pins"][0]["md5"]
        native = {name: summarise(done, reference) for name, done in runs.items()}
        add_pin_costs(native)
        levels = {name: summarise([train_once(work, overrides)], reference)
                  for name, overrides in DISPATCH_LEVELS.items()}
        intel_cpu = cpuinfo().get("vendor_id") == "GenuineIntel"
        shim = None if intel_cpu else intel_shim(work)
        emulated = {}
        if shim is not None:
            intel = {"LD_PRELOAD": str(shim)}
            avx2_only = {**intel, "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
            for name, overrides in {
                    "MKL as on an Intel CPU with AVX-512, all pins": intel,
                    "MKL as on an Intel CPU with AVX2 only, all pins": avx2_only,
                    "MKL as on an Intel CPU with AVX-512, MKL unpinned":
                        {**intel, "MKL_CBWR": ""},
                    "MKL as on an Intel CPU with AVX2 only, MKL unpinned":
                        {**avx2_only, "MKL_CBWR": ""}}.items():
                emulated[name] = summarise([train_once(work, overrides)], reference)
                emulated[name]["environment"] = {key: value for key, value in
                                                 overrides.items() if key != "LD_PRELOAD"}
                print(f"{name}: {emulated[name]['md5']}", flush=True)
        qemu = {}
        if args.qemu:
            for cpu in QEMU_CPUS:
                for label, overrides in (("all pins", {}), ("MKL unpinned", {"MKL_CBWR": ""})):
                    qemu[f"{cpu}, {label}"] = probe_under_qemu(work, cpu, overrides)
                    print(f"qemu {cpu} {label}: {qemu[f'{cpu}, {label}']}", flush=True)
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    write_json(RESULTS, {
        "command": "python benchmarks/cpu_pins_benchmark.py" + (" --qemu" * args.qemu),
        "machine": {"model": info.get("model name", ""), "vendor": info.get("vendor_id", ""),
                    "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
                    "cores": os.cpu_count(), "natural_aten_capability": natural},
        "pins": pins, "unpinned": unpinned, "repeats": args.repeats,
        "native": native, "dispatch_levels": levels,
        "intel_mkl_branches": emulated,
        "intel_mkl_note": ("real hardware; only MKL's vendor check is answered 'Intel', by "
                           "an LD_PRELOAD shim" if emulated else
                           "not run: an Intel CPU runs MKL's Intel branches itself" if intel_cpu
                           else "no C compiler: not run"),
        "qemu_probe": qemu,
        "wall_seconds": round(time.perf_counter() - started, 1)})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
