"""The CPU pins behind reproducible weights (medimg.devices.reproducible_cpu): each kernel
family runs the code it is pinned to, even when the pins are set after the stage's imports,
and the train report can name the CPU and the pins in force."""

import json
import os
import subprocess
import sys

import pytest

from conftest import HAS_AVX2, REPO
from medimg import OPENCV_PINS
from medimg.devices import CPU_PINS, cpuinfo

PINS = {**CPU_PINS, **OPENCV_PINS}

# What a stage does: its imports (OpenCV's before medimg's), then the pins, then the
# model's kinds of work (a convolution large enough for oneDNN, a matmul for MKL); prints
# what the CPU record says, and whether IPP is on in this thread and in another.
STAGE = """
import json, threading
import albumentations, cv2, pandas, timm, torch
from dvclive import Live
from medimg.devices import cpu_record, reproducible_cpu
reproducible_cpu(3)
torch.nn.functional.conv2d(torch.ones(8, 32, 32, 32), torch.ones(64, 32, 3, 3))
torch.nn.functional.linear(torch.ones(4, 64), torch.ones(2, 64))
ipp = []
worker = threading.Thread(target=lambda: ipp.append(cv2.ipp.useIPP()))  # as OpenCV's pool
worker.start()
worker.join()
print(json.dumps({**cpu_record(), "ipp": [cv2.ipp.useIPP(), *ipp]}))
"""


def run_stage(**environment: str) -> tuple[dict, str]:
    """The STAGE snippet in a fresh process; its CPU record and its verbose output."""
    env = {key: value for key, value in os.environ.items() if key not in PINS}
    env.update(MKL_VERBOSE="1", ONEDNN_VERBOSE="1", **environment)
    result = subprocess.run([sys.executable, "-c", STAGE], cwd=REPO / "stages", env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1]), result.stdout + result.stderr


@pytest.mark.skipif(not HAS_AVX2, reason="the pins cap x86_64 kernels at AVX2")
def test_every_kernel_family_runs_its_pinned_code_after_the_stage_imports() -> None:
    record, verbose = run_stage()
    assert record["pins"] == PINS
    assert record["ipp"] == [False, False]  # OpenCV's own code, in every thread
    assert record["aten_capability"] == "AVX2"  # PyTorch's own kernels
    assert "isa:Intel AVX2" in verbose  # oneDNN's convolutions
    assert "CNR:COMPATIBLE" in verbose and "CNR:OFF" not in verbose  # MKL's matmuls
    assert record["threads"] == 3


@pytest.mark.skipif(not HAS_AVX2, reason="the pins cap x86_64 kernels at AVX2")
def test_a_pin_already_in_the_environment_wins_and_the_record_says_so() -> None:
    record, verbose = run_stage(MKL_CBWR="AUTO")
    assert record["pins"] == {**PINS, "MKL_CBWR": "AUTO"}
    assert "CNR:AUTO" in verbose


def test_the_cpu_record_names_the_cpu_its_instruction_sets_and_threads() -> None:
    record, _ = run_stage()
    info = cpuinfo()
    assert record["model"] == info.get("model name", record["model"])
    assert record["vendor"] == info.get("vendor_id", "")
    flags = info.get("flags", "").split()
    assert all(name in flags for name in record["instruction_sets"])
    assert ("avx2" in record["instruction_sets"]) == HAS_AVX2
    assert record["threads"] == 3 and record["torch"]
