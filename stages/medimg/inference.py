"""Running a trained model on images: input expansion, preprocessing as in training, and
two backends (PyTorch and ONNX Runtime) behind one call."""

import glob
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from medimg.images import is_image_name
from medimg.io import read_json
from medimg.models import load_checkpoint, probabilities

ONNX_NAME = "model.onnx"
ONNX_SIDECAR = "model.onnx.json"


def expand_inputs(items: list[str]) -> Iterator[tuple[str, str | None]]:
    """(path, error) for each input: files as given, folders searched for image files,
    and glob patterns expanded. A name that matches nothing comes back with an error."""
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p)
                           and not any(part.startswith(".") for part in p.parts))
            if not found:
                yield item, "folder holds no image files"
            for file in found:
                yield str(file), None
        elif path.is_file():
            yield item, None
        elif any(char in item for char in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                yield item, "pattern matches no file"
            yield from ((match, None) for match in matches if Path(match).is_file())
        else:
            yield item, "no such file or folder"


def normalise(pixels: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 N x H x W x 3 to float32 N x 3 x H x W, normalised as in training."""
    values = pixels.astype(np.float32) / 255.0
    values = (values - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(values.transpose(0, 3, 1, 2))


def softmax_or_sigmoid(logits: np.ndarray) -> np.ndarray:
    return probabilities(torch.from_numpy(logits)).double().numpy()


class TorchBackend:
    def __init__(self, model_dir: Path) -> None:
        self.model, self.config = load_checkpoint(model_dir)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(batch)).float().numpy()
        return softmax_or_sigmoid(logits)


class OnnxBackend:
    def __init__(self, model_dir: Path, file: str = ONNX_NAME) -> None:
        import onnxruntime

        self.config = read_json(model_dir / "model.json")
        self.session = onnxruntime.InferenceSession(str(model_dir / file),
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return softmax_or_sigmoid(self.session.run(None, {self.input: batch})[0])


def load_backend(model_dir: Path, backend: str) -> TorchBackend | OnnxBackend:
    if backend == "onnx":
        if not (model_dir / ONNX_NAME).is_file():
            raise SystemExit(f"--backend onnx: {model_dir / ONNX_NAME} not found; run the "
                             "export stage (dvc repro export)")
        return OnnxBackend(model_dir)
    return TorchBackend(model_dir)
