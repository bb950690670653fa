"""The out-of-distribution contrast dial: its parts on synthetic features, and the committed
results file against the committed metric and against itself."""

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks import ood_tradeoff as bench
from benchmarks.ood_tradeoff import OOD_FILE, configured_contrast, ood_dial_table
from medimg.evaluation.ood_figures import CURVE_POINTS, ood_headline
from medimg.params import load_params

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks/results" / OOD_FILE
SCORED = ("test", "external", "everyday", "other_modalities")
WIDTH = 16  # feature dimension of the synthetic sets


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads(RESULTS.read_text())


def scans(seed: int, count: int, shift: float = 0.0) -> np.ndarray:
    """Features of two classes around +-3 on the first axis, moved by `shift` elsewhere."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, 1.0, (count, WIDTH))
    features[:, 0] += np.where(np.arange(count) % 2 == 1, 3.0, -3.0)
    features[:, 1] += shift
    return features


def photographs(seed: int, count: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(5.0, 2.0, (count, WIDTH))


def test_the_dial_measures_each_contrast_once_with_the_configured_one_added() -> None:
    assert bench.dial([0.2, 0.0, 0.1, 0.0], 0.12) == [0.0, 0.1, 0.12, 0.2]
    assert bench.dial([0.0, 0.12], 0.12) == [0.0, 0.12]


def test_each_contrast_gets_its_own_validation_threshold_and_only_one_curve() -> None:
    params = load_params(REPO / "params.yaml")
    params = params.model_copy(update={"ood": params.ood.model_copy(
        update={"components": 4, "outlier_components": 4, "accept": 0.9})})
    every = {"train": scans(0, 80), "val": scans(1, 40), "outliers": photographs(2, 60),
             "test": scans(3, 30), "external": scans(4, 30, shift=2.0),
             "everyday": photographs(5, 20), "other_modalities": photographs(6, 10) / 2}
    labels = np.arange(80) % 2
    plain = bench.measure(every, labels, params, 0.0, with_curve=False)
    contrasted = bench.measure(every, labels, params, 0.5, with_curve=True)
    assert list(plain["sets"]) == list(SCORED)
    assert plain["val_accepted"] >= 0.9 and contrasted["val_accepted"] >= 0.9
    assert plain["threshold"] != contrasted["threshold"]
    assert "curve" not in plain and len(contrasted["curve"]) <= CURVE_POINTS
    assert {name: row["n"] for name, row in plain["sets"].items()} == {
        "test": 30, "external": 30, "everyday": 20, "other_modalities": 10}


def test_the_dial_table_has_a_row_per_contrast_and_marks_the_configured_one() -> None:
    def row(contrast: float, everyday: float) -> dict:
        sets = {name: {"accepted": 0.9} for name in SCORED} | {
            "everyday": {"accepted": everyday}}
        return {"contrast": contrast, "threshold": 100.4, "sets": sets,
                "auroc": {"everyday_vs_external": 0.8}}

    results = {"configured_contrast": 0.1, "contrasts": [row(0.0, 0.75), row(0.1, 0.25)]}
    assert configured_contrast(results) == results["contrasts"][1]
    assert ood_dial_table(results)[2:] == [
        "| 0 | 100 | 0.250 | 0.900 | 0.900 | 0.100 | 0.800 |",
        "| 0.1 (configured) | 100 | 0.750 | 0.900 | 0.900 | 0.100 | 0.800 |"]


def test_the_committed_results_are_the_committed_metric(results: dict) -> None:
    metric = json.loads((REPO / "metrics/evaluate.json").read_text())
    figures = ood_headline(configured_contrast(results))
    assert figures == {name: metric[name] for name in figures}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert results["configured_contrast"] == params["ood"]["contrast"]


def test_every_contrast_of_the_committed_results_is_a_complete_measurement(
        results: dict) -> None:
    contrasts = [row["contrast"] for row in results["contrasts"]]
    assert contrasts == sorted(set(contrasts)) and results["configured_contrast"] in contrasts
    sizes = {name: figures["n"] for name, figures in results["contrasts"][0]["sets"].items()}
    assert list(sizes) == list(SCORED) and min(sizes.values()) > 0
    for row in results["contrasts"]:
        assert row["val_accepted"] >= results["settings"]["accept"]
        assert {name: figures["n"] for name, figures in row["sets"].items()} == sizes
        for figures in row["sets"].values():
            assert 0 <= figures["accepted_low"] <= figures["accepted"] \
                <= figures["accepted_high"] <= 1
        assert all(0 <= value <= 1 for value in row["auroc"].values())


def test_the_committed_curve_rises_with_the_threshold(results: dict) -> None:
    curve = configured_contrast(results)["curve"]
    assert 2 <= len(curve) <= CURVE_POINTS
    for lower, higher in pairwise(curve):
        assert lower["threshold"] < higher["threshold"]
        for name in SCORED:
            assert 0 <= lower[f"{name}_accepted"] <= higher[f"{name}_accepted"] <= 1
    assert all(curve[-1][f"{name}_accepted"] == 1.0 for name in SCORED)
