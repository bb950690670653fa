"""One way from pixels to probabilities: the evaluate stage, the export stage's parity
check, medimg predict and the service give the same probabilities for the same file."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from conftest import REPO, TINY_CLASSES, picture, save, wait_ready
from medimg.inference import ONNX_NAME, export_onnx, load_classifier
from medimg.params import load_params
from medimg.serving import predict
from medimg.serving.predictor import load_predictor
from medimg.serving.service import create_app
from prepare import write_split

PARAMS = load_params(REPO / "params.yaml")


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory) -> Path:
    folder = Path(shutil.copytree(tiny_model, tmp_path_factory.mktemp("parity") / "model"))
    export_onnx(load_classifier(folder), folder / ONNX_NAME, PARAMS.export.opset)
    return folder


def mixed_files(folder: Path) -> list[Path]:
    """Pictures of other sizes and formats than the model's 32 px input, and a tinted one
    the model is unsure of, so resizing and rounding both show."""
    tinted = picture(5, False)
    tinted[..., 0] += 90
    return [save(folder / "red.png", picture(1, True, size=50)),
            save(folder / "grey.jpg", picture(2, False, size=70), quality=90),
            save(folder / "tinted.webp", tinted, lossless=True)]


def by_predict_py(files: list[Path], model_dir: Path, backend: str, out: Path) -> np.ndarray:
    assert predict.main([*map(str, files), "--model", str(model_dir), "--backend", backend,
                         "--batch-size", "2", "--out", str(out)]) == 0
    return pd.read_csv(out)[[f"prob_{name}" for name in TINY_CLASSES]].to_numpy()


def by_service(files: list[Path], model_dir: Path, backend: str) -> np.ndarray:
    with TestClient(create_app(load_predictor(model_dir, backend))) as client:
        wait_ready(client)
        answer = client.post("/predict", files=[("file", (f.name, f.read_bytes()))
                                                for f in files])
    assert answer.status_code == 200, answer.text
    return np.array([[entry["probabilities"][name] for name in TINY_CLASSES]
                     for entry in answer.json()["results"]])


def test_evaluate_export_predict_and_the_service_agree(model_dir, tmp_path) -> None:
    files = mixed_files(tmp_path / "in")
    # The prepare stage's array of a split, scored as evaluate scores it...
    write_split(tmp_path / "test.npy", files, 32, "squash", workers=1)
    prepared = np.load(tmp_path / "test.npy")
    evaluated = load_classifier(model_dir).predict(prepared, PARAMS.evaluate.batch_size)
    # ...and as the export stage's parity check scores the ONNX model on it.
    exported = load_classifier(model_dir, "onnx").predict(prepared, len(prepared))
    assert 0.05 < evaluated[2, 1] < 0.95  # the tinted picture is not a foregone answer
    assert np.abs(exported - evaluated).max() <= PARAMS.export.tolerance

    # predict.py and the service round to 6 decimals.
    for backend, expected in (("torch", evaluated), ("onnx", exported)):
        predicted = by_predict_py(files, model_dir, backend, tmp_path / f"{backend}.csv")
        served = by_service(files, model_dir, backend)
        assert np.abs(predicted - expected).max() <= 1e-6, backend
        assert np.abs(served - expected).max() <= 1e-6, backend
