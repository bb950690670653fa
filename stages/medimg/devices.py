"""Devices, mixed precision, GPU metrics and torch.distributed, in one place."""

import os
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


class GpuMonitor:
    """Peak allocated memory from PyTorch and utilisation and memory per GPU from NVML,
    sampled during the epoch: NVML's utilisation is the share of time a kernel ran."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda"
        self.handles: list = []
        self.samples: list[list[tuple[float, float]]] = []
        if self.enabled:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
                self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                                for i in range(pynvml.nvmlDeviceGetCount())]
            except Exception:  # NVML missing: keep PyTorch's own figures
                self.handles = []
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device

    def sample(self) -> None:
        for index, handle in enumerate(self.handles):
            rates = self.nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            while len(self.samples) <= index:
                self.samples.append([])
            self.samples[index].append((rates.gpu, memory.used / 2**30))

    def epoch_metrics(self) -> dict[str, float]:
        if not self.enabled:
            return {}
        metrics = {"gpu/peak_allocated_gb": torch.cuda.max_memory_allocated(self.device) / 2**30}
        for index, samples in enumerate(self.samples):
            if samples:
                metrics[f"gpu/{index}/utilization_percent"] = sum(s[0] for s in samples) / len(
                    samples)
                metrics[f"gpu/{index}/memory_used_gb"] = max(s[1] for s in samples)
        self.samples = []
        torch.cuda.reset_peak_memory_stats(self.device)
        return metrics
