"""Shared fixtures: tiny generated images, a tiny trained model and the repository root."""

import io
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from medimg.devices import cpuinfo, is_x86_64

# Reproducibility across machines (tests/pipeline/test_e2e.py; the README states the
# same): the CPU class that wrote the committed dvc.lock's model bytes (vendor and the
# instruction sets medimg.devices.cpu_record names), and how far the headline figures may
# move on any other CPU. Between an AMD EPYC and an Intel Xeon the shift report's AUC
# moved by 0.023 and a share of out-of-distribution images by 0.052; a last-bit change of
# the weights once moved one share by 0.105.
LOCK_CPU = ("AuthenticAMD", ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni",
                             "avx512_bf16"))
METRIC_TOLERANCE = 0.02
SHIFT_TOLERANCE = 0.05
OOD_TOLERANCE = 0.15
# Where the CPU pins apply (medimg.devices.reproducible_cpu) and OpenBLAS's Haswell
# kernels run.
HAS_AVX2 = is_x86_64() and "avx2" in cpuinfo().get("flags", "").split()

# Debian's chromium, which the page test drives and scripts/test.sh installs.
CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 90  # a busy 2-core machine takes seconds to import torch and warm up


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def noise_image(seed: int, size: tuple[int, int] = (40, 32)) -> np.ndarray:
    """A random RGB image: distinct seeds give images that share nothing."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def save(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return path


TINY_CLASSES = ["grey", "red"]


def picture(seed: int, red: bool, size: int = 40) -> np.ndarray:
    """A noisy grey picture, or a red one: what the tiny model learns to tell apart."""
    pixels = np.random.default_rng(seed).integers(60, 120, (size, size, 3))
    if red:
        pixels[..., 0] += 120
    return pixels.astype(np.uint8)


class Pictures(Dataset):
    def __init__(self, count: int) -> None:
        self.labels = np.arange(count) % 2
        self.images = torch.from_numpy(
            np.stack([picture(i, bool(label), 32) for i, label in enumerate(self.labels)]))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def train_tiny_model(folder: Path, **decode: int) -> Path:
    """timm's tiny test model trained to tell red pictures from grey ones, saved as the
    train stage saves a checkpoint (decoding rules from params.yaml unless given)."""
    from medimg.params import load_params
    from medimg.training.models import (
        ModelConfig,
        create_model,
        normalisation,
        save_checkpoint,
    )
    from medimg.training.trainer import Trainer, seed_everything

    params = load_params(REPO / "params.yaml")
    seed_everything(0)
    model = create_model("test_efficientnet", "none", 2)
    train = params.train.model_copy(update={
        "epochs": 4, "freeze_epochs": 0, "batch_size": 8, "lr": 1e-2, "device": "cpu"})
    Trainer(model, Pictures(32), Pictures(8), train, seed=0, num_classes=2).fit()
    rules = {"max_pixels": params.dedup.max_pixels, "min_side": params.dedup.min_side, **decode}
    save_checkpoint(folder, model, ModelConfig(
        model="test_efficientnet", classes=TINY_CLASSES, image_size=32, resize="squash",
        decode=rules, **normalisation(model)))
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny trained model folder (model.safetensors + model.json), shared by the session:
    tests that add files to it (an ONNX export) must work on a copy."""
    return train_tiny_model(tmp_path_factory.mktemp("tiny_model"))


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(client: httpx.Client) -> dict:
    """Poll /readyz while it answers 503 (warming up); its JSON once ready."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while (answer := client.get("/readyz")).status_code == 503:
        assert time.monotonic() < deadline, f"not ready after {READY_TIMEOUT_S} s: {answer.text}"
        time.sleep(0.05)
    assert answer.status_code == 200, answer.text
    return answer.json()


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen


@contextmanager
def serve_py(model_dir: Path, log: Path, *options: str) -> Iterator[Served]:
    """`medimg serve` in a process of its own on a free loopback port, until /readyz
    says ready; yields its URL and process, and stops it afterwards. Its output goes to
    `log`."""
    port = free_port()
    command = [sys.executable, "-m", "medimg", "serve", "--model", str(model_dir),
               "--port", str(port), *options]
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(url):
            if server.poll() is not None:
                pytest.fail(f"serve.py exited with {server.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"serve.py not ready after {READY_TIMEOUT_S} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield Served(url, server)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False  # not listening yet


def header_values(raw: Path) -> set[str]:
    """Every identifying header value of every DICOM file under raw: the planted ones and
    the UIDs."""
    values = set()
    for path in raw.rglob("*"):
        if path.is_file() and path.suffix not in (".csv", ".key"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            values |= {str(ds.get(key)) for key in
                       ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                        "InstitutionName", "StudyDate", "ReferringPhysicianName",
                        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    return values


def splits_per_patient(raw: Path, table: pd.DataFrame) -> dict[str, set[str]]:
    """Each PatientID's splits, read from the headers, not from the pipeline's columns."""
    found: dict[str, set[str]] = {}
    for path, part in zip(table["path"], table["split"], strict=True):
        patient = pydicom.dcmread(raw / path.split("#")[0], stop_before_pixels=True).PatientID
        found.setdefault(patient, set()).add(part)
    return found


def planted_in(paths: list[Path], values: set[str]) -> dict[str, list[str]]:
    """The files among `paths` that hold any of `values`, with the values each holds."""
    found = {}
    for path in paths:
        data = path.read_bytes()
        if held := sorted(value for value in values if value.encode() in data):
            found[path.as_posix()] = held
    return found
