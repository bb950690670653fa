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

from medimg.data.hashing import file_sha256
from medimg.devices import reproducible_cpu
from medimg.docs import results_file
from medimg.evaluation.ood import fit_detector
from medimg.evaluation.ood_figures import ood_figures, ood_headline, reference_features
from medimg.evaluation.references import model_inputs, outlier_exposure
from medimg.inference import Classifier, load_classifier
from medimg.io import read_json, write_json
from medimg.params import Params, load_params

REPO = Path(__file__).resolve().parents[1]

MODEL_DIR = REPO / "models"
PREPARED = REPO / "data/prepared"
EVALUATE_METRICS = REPO / "metrics/evaluate.json"
OOD_FILE = "ood_tradeoff.json"
RESULTS = REPO / "benchmarks/results" / OOD_FILE
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


OOD_SETS = {"test": "test split", "external": "external MRI (packaged, other scanners)",
            "everyday": "everyday photographs and graphics",
            "other_modalities": "other modalities (retina, CT, ultrasound, microscopy)"}

OOD_GOALS = {"everyday_flagged": 0.85, "accepted": 0.90}  # issue 17's acceptance goals


def configured_contrast(bench: dict) -> dict:
    """The contrast dial's row at the configured `ood.contrast`: the pipeline's detector."""
    return next(row for row in bench["contrasts"]
                if row["contrast"] == bench["configured_contrast"])


def ood_goal_line(ood: dict) -> str:
    """Whether both goals hold at the chosen threshold, and the best the curve offers."""
    sets, curve = ood["sets"], ood["curve"]
    flagged = 1 - sets["everyday"]["accepted"]
    inside = min(sets["test"]["accepted"], sets["external"]["accepted"])
    both = flagged >= OOD_GOALS["everyday_flagged"] and inside >= OOD_GOALS["accepted"]

    def accepted_inside(point: dict) -> float:
        return min(point["test_accepted"], point["external_accepted"])

    keeping = [1 - p["everyday_accepted"] for p in curve
               if accepted_inside(p) >= OOD_GOALS["accepted"]]
    flagging = [accepted_inside(p) for p in curve
                if 1 - p["everyday_accepted"] >= OOD_GOALS["everyday_flagged"]]
    verdict = "both hold" if both else "not both hold with the sample's narrow training set"
    return (f"Goals: at least {OOD_GOALS['everyday_flagged']:.0%} of the everyday images "
            f"flagged and {OOD_GOALS['accepted']:.0%} of test and external images accepted: "
            f"{verdict}. On the threshold curve, accepting {OOD_GOALS['accepted']:.0%} of "
            f"both flags at most {max(keeping, default=0):.0%} of the everyday images; "
            f"flagging {OOD_GOALS['everyday_flagged']:.0%} accepts at most "
            f"{max(flagging, default=0):.0%} of both.")


def ood_markdown(root: Path) -> str:
    """The pipeline's out-of-distribution detector at its threshold on each packaged set."""
    ood = configured_contrast(results_file(root, OOD_FILE))
    lines = ["| images (n) | accepted as MRI or histology (95% CI) |", "|---|---|"]
    for name, label in OOD_SETS.items():
        row = ood["sets"][name]
        lines.append(f"| {label} ({row['n']}) | {row['accepted']:.3f} "
                     f"({row['accepted_low']:.3f} to {row['accepted_high']:.3f}) |")
    auroc = ood["auroc"]
    return "\n".join([*lines, "", f"ROC-AUC, everyday against test: "
                      f"{auroc['everyday_vs_test']:.3f}; against external: "
                      f"{auroc['everyday_vs_external']:.3f}. {ood_goal_line(ood)}"])


def ood_dial_table(bench: dict) -> list[str]:
    """One row per contrast, each detector at its own validation threshold."""
    lines = ["| contrast | threshold | everyday flagged | test accepted | external accepted "
             "| other modalities flagged | ROC-AUC everyday vs external |",
             "|---|---|---|---|---|---|---|"]
    for row in bench["contrasts"]:
        sets = row["sets"]
        chosen = " (configured)" if row["contrast"] == bench["configured_contrast"] else ""
        lines.append(f"| {row['contrast']:g}{chosen} | {row['threshold']:.0f} | "
                     f"{1 - sets['everyday']['accepted']:.3f} | "
                     f"{sets['test']['accepted']:.3f} | {sets['external']['accepted']:.3f} | "
                     f"{1 - sets['other_modalities']['accepted']:.3f} | "
                     f"{row['auroc']['everyday_vs_external']:.3f} |")
    return lines


def ood_curve_markdown(root: Path) -> str:
    """The contrast dial, then every threshold of the configured contrast's curve: what
    each set's acceptance would be there."""
    bench = results_file(root, OOD_FILE)
    ood = configured_contrast(bench)
    names = list(OOD_SETS)
    curve = ["| threshold | " + " | ".join(f"{OOD_SETS[n]} accepted" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for point in ood["curve"]:
        curve.append(f"| {point['threshold']:.0f} | "
                     + " | ".join(f"{point[f'{n}_accepted']:.3f}" for n in names) + " |")
    return "\n".join([
        f"One detector fitted per `ood.contrast`, each with the threshold that accepts "
        f"{bench['settings']['accept']:.0%} of the validation split (`{bench['command']}`, "
        f"{bench['wall_seconds']:.0f} s on {bench['machine']['cpus']} CPU cores, model "
        f"sha256 `{bench['model_sha256'][:12]}`):", "", *ood_dial_table(bench), "",
        f"Every threshold at the configured contrast {ood['contrast']:g} (chosen: "
        f"{ood['threshold']:.0f}):", "", *curve])


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
