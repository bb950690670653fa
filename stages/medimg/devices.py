"""Devices, mixed precision, GPU metrics and torch.distributed, in one place."""

import os
import platform
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist


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
            raise SystemExit("train.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def reproducible_cpu(threads: int) -> None:
    """The same arithmetic on every x86_64 CPU: oneDNN capped at its AVX2 kernels (on an
    AVX-512 machine it would pick others, whose sums round differently) and a fixed number
    of threads. Takes effect only before the process's first convolution."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    torch.set_num_threads(threads)


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
