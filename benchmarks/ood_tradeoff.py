"""The out-of-distribution detector's contrast dial on the default pipeline's outputs;
writes benchmarks/results/ood_tradeoff.json.

    python benchmarks/ood_tradeoff.py [--contrast 0 0.05 0.1 0.12 0.14 0.2]

Reads what `dvc repro` leaves in the working tree: models/model.safetensors + model.json,
data/prepared/{train,val,test}.npy and .csv, and models/ood.json and metrics/evaluate.json
to check against. The network's features are computed once, as the ood and evaluate stages
compute them (PyTorch on the CPU, their batch sizes). For each contrast (`ood.contrast` in
params.yaml is always one of them) the detector is fitted as the ood stage fits it, with
every other `ood.*` setting from params.yaml, and scored as the evaluate stage scores it:
the share of each set accepted at the threshold that accepts `ood.accept` of the
validation split, with Wilson intervals, and the ROC-AUCs; the configured contrast also
gets the whole threshold curve. Its figures must be the pipeline's: the script stops with
an error naming the file when they are not (stale outputs: run `dvc repro` first).
"""

import argparse
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch

REPO = Path(__file__).resolve().parents[1]

from medimg.data.hashing import file_sha256  # noqa: E402
from medimg.devices import reproducible_cpu  # noqa: E402
from medimg.evaluation.ood import fit_detector  # noqa: E402
from medimg.evaluation.ood_figures import ood_figures, ood_headline, reference_features  # noqa: E402
from medimg.evaluation.references import model_inputs, outlier_exposure  # noqa: E402
from medimg.inference import Classifier, load_classifier  # noqa: E402
from medimg.io import read_json, write_json  # noqa: E402
from medimg.params import Params, load_params  # noqa: E402

MODEL_DIR = REPO / "models"
PREPARED = REPO / "data/prepared"
EVALUATE_METRICS = REPO / "metrics/evaluate.json"
RESULTS = REPO / "benchmarks/results/ood_tradeoff.json"
CONTRASTS = (0.0, 0.05, 0.10, 0.12, 0.14, 0.20)


def dial(requested: list[float], configured: float) -> list[float]:
    """The contrasts to measure: those requested and the configured one, ascending, each
    once."""
    return sorted({*requested, configured})


def features(classifier: Classifier, params: Params) -> tuple[dict[str, np.ndarray],
                                                               dict[str, list[str]]]:
    """Every feature set the two stages use, by name (train, val and outliers as the ood
    stage computes them; test and the reference sets as the evaluate stage does), and the
    reference sets' source files."""
    fit_batch, score_batch = params.ood.batch_size, params.evaluate.batch_size

    def split(name: str, batch_size: int) -> np.ndarray:
        images = np.load(PREPARED / f"{name}.npy", mmap_mode="r")
        return classifier.predict_with_features(images, batch_size)[1]

    outliers = model_inputs(outlier_exposure(params.ood.outlier_images, params.seed),
                            classifier.config)
    references, sources = reference_features(classifier, score_batch)
    return {"train": split("train", fit_batch), "val": split("val", fit_batch),
            "outliers": classifier.predict_with_features(outliers, fit_batch)[1],
            "test": split("test", score_batch), **references}, sources


def measure(every: dict[str, np.ndarray], labels: np.ndarray, params: Params,
            contrast: float, with_curve: bool) -> dict:
    """The detector fitted at `contrast` as the ood stage fits it, scored on the test split
    and the reference sets as the evaluate stage scores it."""
    settings = params.ood
    detector = fit_detector(every["train"], labels, every["val"], every["outliers"],
                            settings.components, settings.outlier_components, contrast,
                            settings.accept)
    scored = {name: values for name, values in every.items()
              if name not in ("train", "val", "outliers")}
    figures = ood_figures(detector, scored)
    if not with_curve:
        del figures["curve"]
    return {**figures, "val_accepted": detector.summary["val_accepted"]}


def check_against_pipeline(row: dict) -> None:
    """Stop when the configured contrast does not reproduce the pipeline's detector and
    metric: the outputs in the working tree are stale or the code differs."""
    threshold = read_json(MODEL_DIR / "ood.json")["threshold"]
    if not math.isclose(row["threshold"], threshold, rel_tol=1e-9):
        sys.exit(f"models/ood.json: threshold {threshold} but {row['threshold']} refitted; "
                 "run dvc repro first")
    metric = read_json(EVALUATE_METRICS)
    for name, value in ood_headline(row).items():
        if metric.get(name) != value:
            sys.exit(f"metrics/evaluate.json: {name} {metric.get(name)} but {value} "
                     "refitted; run dvc repro first")


def machine() -> dict:
    return {"cpus": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "timm": timm.__version__,
            "numpy": np.__version__}


def main() -> None:
    params = load_params(REPO / "params.yaml")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contrast", type=float, nargs="+", default=list(CONTRASTS),
                        help=f"besides ood.contrast ({params.ood.contrast})")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    reproducible_cpu(params.cpu_threads)
    # The CPU, as the ood stage runs: its threshold is then reproduced exactly.
    every, sources = features(load_classifier(MODEL_DIR), params)
    labels = pd.read_csv(PREPARED / "train.csv")["label"].to_numpy()
    configured = params.ood.contrast
    rows = [{"contrast": contrast,
             **measure(every, labels, params, contrast, contrast == configured)}
            for contrast in dial(args.contrast, configured)]
    check_against_pipeline(next(row for row in rows if row["contrast"] == configured))
    settings = params.ood.model_dump()
    write_json(args.out, {
        "command": shlex.join(["python", "benchmarks/ood_tradeoff.py", *sys.argv[1:]]),
        "machine": machine(), "wall_seconds": round(time.perf_counter() - start, 1),
        "model_sha256": file_sha256(MODEL_DIR / "model.safetensors"),
        "configured_contrast": configured,
        "settings": {key: value for key, value in settings.items() if key != "contrast"},
        "fitted_on": {name: len(every[name]) for name in ("train", "val", "outliers")},
        "sources": sources, "contrasts": rows})
    for row in rows:
        sets = row["sets"]
        print(f"contrast {row['contrast']:g}: threshold {row['threshold']:.0f}, everyday "
              f"flagged {1 - sets['everyday']['accepted']:.3f}, test accepted "
              f"{sets['test']['accepted']:.3f}, external accepted "
              f"{sets['external']['accepted']:.3f}")


if __name__ == "__main__":
    main()
