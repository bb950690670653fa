"""The out-of-distribution benchmark's protocol: its parts on synthetic features, and the
committed results files (default and real-data model) against params.yaml, the committed
metric and themselves."""

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from benchmarks import ood_tradeoff as bench
from benchmarks.ood_tradeoff import KINDS, OOD_FILES, ood_curve_markdown, ood_markdown
from medimg.errors import ParamsError
from medimg.evaluation.ood import build_detector
from medimg.evaluation.ood_fitting import FittingSet, tuned_detector
from medimg.params import OodParams, load_params

REPO = Path(__file__).resolve().parents[2]
WIDTH = 8
SETTINGS = OodParams(k_candidates=[1], accept_share=0.95, familiar_share=0.95, domain="x",
                     reference_size=4096, jitter_copies=1, outlier_images=2, batch_size=8)


@pytest.fixture(scope="module", params=list(OOD_FILES))
def results(request) -> dict:
    return json.loads((REPO / "benchmarks/results" / OOD_FILES[request.param]).read_text())


def cloud(seed: int, count: int, centre: int) -> np.ndarray:
    """Positive features around the `centre`-th axis: cosine distance reads directions."""
    features = np.abs(np.random.default_rng(seed).normal(0.0, 0.2, (count, WIDTH)))
    features[:, centre] += 2.0
    return features


def test_tuning_keeps_the_k_whose_threshold_flags_the_most_outlier_exposure() -> None:
    # Outliers in two tight clumps close to the reference, and photos far away: the
    # nearest neighbour finds a clump's images close to each other; more neighbours,
    # all in the reference, find them far.
    settings = SETTINGS.model_copy(update={"k_candidates": [1, 5, 10]})
    clumps = np.r_[np.repeat(cloud(3, 1, 1), 6, axis=0), np.repeat(cloud(4, 1, 2), 6, axis=0)]
    fitting = FittingSet(np.r_[cloud(0, 60, 0), clumps[:1], clumps[6:7]],
                         {"scanner": cloud(1, 20, 0)}, np.r_[clumps, cloud(5, 12, 7)],
                         np.array(["clumps.png"] * 12 + ["photo.jpg"] * 12))
    detector = tuned_detector(fitting, cloud(2, 20, 0), settings, seed=0)
    flagged = {int(k): v for k, v in detector.summary["outliers_flagged_by_k"].items()}
    assert sorted(flagged) == [1, 5, 10]
    assert flagged[1] < flagged[5]  # one neighbour: the clumps pass as the reference
    assert detector.k == max(flagged, key=lambda k: (flagged[k], -k))
    for k, share in flagged.items():
        built = build_detector(fitting.reference, cloud(2, 20, 0), fitting.calibration, k,
                               settings, seed=0)
        assert fitting.outliers_flagged(built) == share
    # A k above the reference's rows is not tried; with none left, one line says so.
    few = FittingSet(fitting.reference[:3], fitting.calibration, fitting.outliers,
                     fitting.outlier_sources)
    assert tuned_detector(few, cloud(2, 20, 0), settings, seed=0).k == 1
    with pytest.raises(ParamsError, match=r"ood\.k_candidates: every k is above the "
                                          "reference's 3 rows"):
        tuned_detector(few, cloud(2, 20, 0),
                       settings.model_copy(update={"k_candidates": [5]}), seed=0)


def test_a_calibrated_rank_puts_every_score_on_the_calibration_sources_scale() -> None:
    calibration = {"a": np.arange(10.0)[:, None], "b": np.arange(10.0, 30.0)[:, None]}
    rank = bench.calibrated_rank(lambda features: features[:, 0], calibration)
    assert rank(np.array([[-1.0], [5.0], [100.0]])).tolist() == [0.0, 0.25, 1.0]


def test_the_best_point_is_the_threshold_whose_worst_goal_is_highest() -> None:
    kinds = KINDS["default"]

    def point(threshold: float, mri: float, idc: float, everyday: float) -> dict:
        return {"threshold": threshold, "test_accepted": 1.0, "breast-idc_accepted": idc,
                "everyday_accepted": everyday,
                **{f"{name}_accepted": mri for name in kinds["mri"]}}
    curve = [point(0, 0.5, 0.6, 0.0), point(1, 0.8, 0.9, 0.3), point(2, 1.0, 1.0, 0.7)]
    assert bench.best_point(curve, kinds) == {"threshold": 1, "mri_accepted": 0.8,
                                              "histology_accepted": 0.9,
                                              "everyday_flagged": 0.7, "test_accepted": 1.0}


def test_each_knn_method_runs_the_k_that_outlier_exposure_chose(results: dict) -> None:
    candidates = load_params(REPO / "params.yaml").ood.k_candidates
    for name, method in results["methods"].items():
        if name.startswith("knn_"):
            flagged = {int(k): v for k, v in method["outliers_flagged_by_k"].items()}
            assert sorted(flagged) == sorted(candidates)
            assert method["k"] == max(flagged, key=lambda k: (flagged[k], -k)), name


def test_the_committed_results_are_the_committed_metric() -> None:
    results = json.loads((REPO / "benchmarks/results" / OOD_FILES["default"]).read_text())
    metric = json.loads((REPO / "metrics/evaluate.json").read_text())
    sources = results["methods"][results["pipeline"]]["sources"]
    assert round(sources["test"]["accepted"], 4) == metric["ood_test"]
    assert round(1 - sources["everyday"]["accepted"], 4) == metric["ood_flagged"]


def test_every_method_is_scored_on_every_held_out_source(results: dict) -> None:
    kinds = KINDS[results["model"]]
    for method in results["methods"].values():
        sizes = {name: row["n"] for name, row in method["sources"].items()}
        assert {name: sizes[name] for name in results["held_out"]} == results["held_out"]
        assert sizes["everyday"] == 19 and sizes["other_modalities"] == 10
        goals = method["goals"]
        assert goals["mri_accepted"]["n"] == sum(sizes[n] for n in kinds["mri"])
        assert goals["histology_accepted"]["n"] == sum(sizes[n] for n in kinds["histology"])
        for figure in goals.values():
            assert figure["low"] <= figure["share"] <= figure["high"]


def test_each_committed_curve_accepts_more_as_the_threshold_rises(results: dict) -> None:
    for method in results["methods"].values():
        curve = method["curve"]
        assert [p["threshold"] for p in curve] == sorted(p["threshold"] for p in curve)
        for name in method["sources"]:
            shares = [point[f"{name}_accepted"] for point in curve]
            assert all(a <= b for a, b in pairwise(shares)), name


def test_the_docs_show_only_held_out_sources(results: dict) -> None:
    shown = ood_markdown(REPO)
    assert "Brain Tumor MRI" in shown and "breast IDC" in shown
    assert "external" not in shown.lower() and "validation" not in shown
    for name in results["descriptions"].values():
        assert name in ood_curve_markdown(REPO)


def test_the_committed_cost_says_met_only_where_its_own_figures_do() -> None:
    cost = json.loads((REPO / "benchmarks/results/ood_cost.json").read_text())
    service = cost["service"]
    assert cost["met"] == all(drop <= cost["goal_drop"] for drop in service["drop"].values())
    largest = service["reference"]["largest"]
    assert largest["rows"] == load_params(REPO / "params.yaml").ood.reference_size
    assert cost["bytes_met"] == (largest["in_memory_bytes"] <= cost["goal_bytes"])
    for row in (service, cost["ort_defaults"]):
        rates = row["images_per_second"]
        for side in ("default", "largest"):
            assert row["drop"][side] == pytest.approx(1 - rates[side] / rates["without"],
                                                      abs=1e-3)
