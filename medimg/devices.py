"""Devices, mixed precision, GPU metrics, torch.distributed, and the CPU pins that make
weights the same on every x86_64 CPU with AVX2, in one place."""

import os
import platform
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from medimg import OPENCV_PINS
from medimg.errors import ParamsError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; under torchrun each process
    takes the GPU of its local rank."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ParamsError("train.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


# Each CPU kernel family that picks its code by the CPU it runs on, capped at what every
# x86_64 CPU with AVX2 runs, so that the sums are done in the same order on all of them.
# Measured, and what each costs: docs/pipeline.md#reproducibility.
CPU_PINS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: convolutions (AVX-512 kernels round otherwise)
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorised kernels
    # MKL: matmuls and LAPACK. Its AVX2 branch is for Intel CPUs only (on AMD it falls back
    # to the automatic one), so the branch both vendors run the same way is COMPATIBLE.
    "MKL_CBWR": "COMPATIBLE",
}
# Instruction sets worth naming in a report: the ones that decide which kernels run.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
              "amx_tile")


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def reproducible_cpu(threads: int) -> None:
    """The same arithmetic on every x86_64 CPU with AVX2: every kernel family capped by
    CPU_PINS, and a fixed number of threads (a sum split over threads rounds differently).
    Must run before the process's first tensor operation: PyTorch and MKL read the
    variables once. A variable already set in the environment wins; `cpu_record` says
    which values were in force."""
    if is_x86_64():
        for name, value in CPU_PINS.items():
            os.environ.setdefault(name, value)
    torch.set_num_threads(threads)


def cpuinfo() -> dict[str, str]:
    """The first CPU's entries in /proc/cpuinfo ("model name", "vendor_id", "flags", ...);
    empty off Linux."""
    path = Path("/proc/cpuinfo")
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        key, _, value = line.partition(":")
        entries.setdefault(key.strip(), value.strip())
    return entries


def cpu_record() -> dict:
    """What decides the bytes a CPU run writes, for the train report: a lock that does not
    reproduce elsewhere is explained by comparing two of these."""
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    return {"machine": platform.machine(),
            "vendor": info.get("vendor_id", ""),
            "model": info.get("model name", platform.processor()),
            "instruction_sets": [flag for flag in SIMD_FLAGS if flag in flags],
            "threads": torch.get_num_threads(),
            "pins": {name: os.environ.get(name) for name in {**CPU_PINS, **OPENCV_PINS}},
            "aten_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun set up (NCCL on GPU, gloo on CPU); (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def collective_device() -> torch.device:
    """Where a tensor handed to a collective must live: NCCL moves only CUDA tensors (a
    CPU tensor fails with 'No backend type associated with device type cpu'), gloo CPU
    ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_zero_decides(flag: bool) -> bool:
    """Every process takes rank 0's decision (stop early, interrupted, ...)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], device=collective_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def peak_memory_gb(device: torch.device) -> dict[str, float]:
    """PyTorch's peak allocated memory on a CUDA device since the last call, as a metric
    (none elsewhere). Utilisation and the memory NVML sees come from dvclive's system
    monitor."""
    if device.type != "cuda":
        return {}
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return {"gpu/peak_allocated_gb": peak}
