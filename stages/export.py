"""Stage `export`: the best checkpoint as ONNX with a dynamic batch axis, checked against
PyTorch on the test split, and optionally quantised to int8.

Writes models/model.onnx, models/model.onnx.json (inputs, outputs and preprocessing),
models/int8/model.onnx (with export.int8; else the folder is empty) and
metrics/report/export.json. Fails when the ONNX
probabilities differ from PyTorch's by more than export.tolerance or a label changes.
"""

import os
from pathlib import Path

import numpy as np
import pandas as pd

from medimg.devices import reproducible_cpu
from medimg.errors import ModelError, run
from medimg.evaluation.metrics import accuracy
from medimg.inference import ONNX_NAME, ONNX_SIDECAR, export_onnx, load_classifier
from medimg.io import atomic_path, write_json
from medimg.params import load_params
from medimg.training.models import ModelConfig

MODEL_DIR = Path("models")
INT8_DIR = MODEL_DIR / "int8"  # a folder, so the output exists when int8 is off
PREPARED = Path("data/prepared")
REPORT = Path("metrics/report/export.json")


def sidecar(config: ModelConfig) -> dict:
    return {
        "model": ONNX_NAME,
        "input": {"name": "image", "shape": ["batch", 3, config.image_size,
                                              config.image_size], "dtype": "float32"},
        "output": {"name": "logits", "activation": "sigmoid of the one logit = probability of "
                   f"{config.classes[1]}" if len(config.classes) == 2 else "softmax"},
        "features": {"name": "features", "shape": ["batch", "features"],
                     "use": "each feature stage's output, pooled, scored by the "
                            "out-of-distribution detector (ood.json)"},
        "classes": config.classes,
        "preprocessing": {
            "decode": "EXIF orientation applied; any mode to 8-bit RGB, transparency on white",
            "resize": f"{config.resize} to {config.image_size}x{config.image_size}, "
                      "bicubic",
            "scale": "divide by 255", "mean": config.mean, "std": config.std,
            "layout": "NCHW"},
    }


def compare(reference: np.ndarray, other: np.ndarray, labels: np.ndarray) -> dict:
    return {"max_abs_probability_difference": float(np.abs(reference - other).max()),
            "labels_identical": bool((reference.argmax(1) == other.argmax(1)).all()),
            "accuracy": accuracy(labels, other.argmax(1))}


def main() -> None:
    params = load_params()
    settings = params.export
    reproducible_cpu(params.cpu_threads)
    classifier = load_classifier(MODEL_DIR)
    export_onnx(classifier, MODEL_DIR / ONNX_NAME, settings.opset)
    write_json(MODEL_DIR / ONNX_SIDECAR, sidecar(classifier.config))
    pixels = np.load(PREPARED / "test.npy")
    labels = pd.read_csv(PREPARED / "test.csv")["label"].to_numpy()
    reference = classifier.predict(pixels, len(pixels))
    onnx = compare(reference, load_classifier(MODEL_DIR, "onnx").predict(pixels, len(pixels)),
                   labels)
    report = {"n": len(labels), "tolerance": settings.tolerance,
              "torch_accuracy": accuracy(labels, reference.argmax(1)),
              "onnx": {**onnx, "size_mb": round(os.path.getsize(MODEL_DIR / ONNX_NAME) / 2**20, 2)}}
    INT8_DIR.mkdir(exist_ok=True)
    if settings.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with atomic_path(INT8_DIR / ONNX_NAME) as tmp:
            quantize_dynamic(str(MODEL_DIR / ONNX_NAME), str(tmp), weight_type=QuantType.QInt8)
        quantised = load_classifier(MODEL_DIR, "onnx", onnx_file=f"int8/{ONNX_NAME}")
        int8 = compare(reference, quantised.predict(pixels, len(pixels)), labels)
        report["int8"] = {**int8,
                          "size_mb": round(os.path.getsize(INT8_DIR / ONNX_NAME) / 2**20, 2),
                          "accuracy_change": int8["accuracy"] - report["torch_accuracy"]}
    write_json(REPORT, report)
    if onnx["max_abs_probability_difference"] > settings.tolerance or not onnx["labels_identical"]:
        raise ModelError(f"export: ONNX differs from PyTorch: {onnx}")
    print(f"export: {len(labels)} test images, max |dp| "
          f"{onnx['max_abs_probability_difference']:.2e}, labels identical")


if __name__ == "__main__":
    run(main)
