"""The out-of-distribution benchmark's protocol: its parts on synthetic features, and the
committed results file against params.yaml, the committed metric and itself."""

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from benchmarks import ood_tradeoff as bench
from benchmarks.ood_tradeoff import KINDS, OOD_FILE, ood_curve_markdown, ood_markdown
from medimg.evaluation.ood_fitting import TRAIN_SOURCE, FittingSet
from medimg.params import load_params

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks/results" / OOD_FILE
WIDTH = 8


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads(RESULTS.read_text())


def features(seed: int, count: int, centre: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(centre, 1.0, (count, WIDTH))


def test_tuning_keeps_the_threshold_that_left_out_sources_favour() -> None:
    inside = np.r_[features(0, 60, 0.0), features(1, 20, 0.5)]
    outside = np.r_[features(2, 30, 4.0), features(3, 30, 5.0)]
    fitting = FittingSet(inside, np.array([TRAIN_SOURCE] * 60 + ["scanner.nii"] * 20),
                         outside, np.array(["photo.jpg"] * 30 + ["icon.png"] * 30))
    knobs = bench.tuned(fitting, features(4, 20, 0.0))
    assert knobs["sources"] == ["icon.png", "photo.jpg", "scanner.nii"]
    assert knobs["penalty"] in bench.PENALTIES and knobs["threshold"] in bench.THRESHOLDS
    assert knobs["candidates"] == len(bench.PENALTIES) * len(bench.THRESHOLDS)
    # Well separated sources: the left-out figures reach both ends.
    assert knobs["left_out_mri_accepted"] == 1.0
    assert knobs["left_out_outliers_flagged"] == 1.0


def test_the_best_point_is_the_threshold_whose_worst_goal_is_highest() -> None:
    def point(threshold: float, mri: float, idc: float, everyday: float) -> dict:
        return {"threshold": threshold, "test_accepted": 1.0, "breast-idc_accepted": idc,
                "everyday_accepted": everyday,
                **{f"{name}_accepted": mri for name in KINDS["mri"]}}
    curve = [point(0, 0.5, 0.6, 0.0), point(1, 0.8, 0.9, 0.3), point(2, 1.0, 1.0, 0.7)]
    assert bench.best_point(curve) == {"threshold": 1, "mri_accepted": 0.8,
                                       "histology_accepted": 0.9, "everyday_flagged": 0.7,
                                       "test_accepted": 1.0}


def test_the_pipeline_runs_the_knobs_that_left_out_sources_chose(results: dict) -> None:
    params = load_params(REPO / "params.yaml")
    method = results["methods"][results["pipeline"]]
    assert (method["penalty"], method["threshold"]) == (params.ood.penalty, params.ood.threshold)
    assert (method["tuned"]["penalty"], method["tuned"]["threshold"]) == (
        params.ood.penalty, params.ood.threshold)


def test_the_committed_results_are_the_committed_metric(results: dict) -> None:
    metric = json.loads((REPO / "metrics/evaluate.json").read_text())
    sources = results["methods"][results["pipeline"]]["sources"]
    assert round(sources["test"]["accepted"], 4) == metric["ood_test"]
    assert round(1 - sources["everyday"]["accepted"], 4) == metric["ood_flagged"]


def test_every_method_is_scored_on_every_held_out_source(results: dict) -> None:
    sizes = {"test": 92, **results["held_out"], "everyday": 19, "other_modalities": 10}
    for method in results["methods"].values():
        assert {name: row["n"] for name, row in method["sources"].items()} == sizes
        goals = method["goals"]
        assert goals["mri_accepted"]["n"] == sum(results["held_out"][n] for n in KINDS["mri"])
        for figure in goals.values():
            assert figure["low"] <= figure["share"] <= figure["high"]


def test_each_committed_curve_accepts_more_as_the_threshold_rises(results: dict) -> None:
    for method in results["methods"].values():
        curve = method["curve"]
        assert [p["threshold"] for p in curve] == sorted(p["threshold"] for p in curve)
        for name in method["sources"]:
            shares = [point[f"{name}_accepted"] for point in curve]
            assert all(a <= b for a, b in pairwise(shares)), name


def test_the_readme_shows_only_held_out_sources(results: dict) -> None:
    shown = ood_markdown(REPO)
    assert "Brain Tumor MRI set" in shown and "breast IDC" in shown
    assert "external" not in shown.lower() and "validation" not in shown
    for name in results["descriptions"].values():
        assert name in ood_curve_markdown(REPO)
