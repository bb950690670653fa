"""The logic of benchmarks/real/experiments.py on small fake experiment records, and the
committed task B figures against the runs they summarise."""

import json

import numpy as np
import pytest
import yaml

from benchmarks.real import experiments
from conftest import REPO


def record(name: str, best: float, finished: float = 0.0) -> dict:
    return {"name": name, "train": {experiments.SELECT: best}, "finished": finished}


CANDIDATES = {"base": {}, "smooth": {"train.label_smoothing": 0.1},
              "weighted": {"train.class_weights": True}}


def test_the_recipe_is_chosen_on_validation_and_ties_go_to_the_earlier_candidate() -> None:
    records = [record("base", 0.90), record("smooth", 0.93), record("weighted", 0.93),
               record("seed1", 0.99)]  # not a candidate: never chosen
    assert experiments.chosen(records, CANDIDATES) == ("smooth", CANDIDATES["smooth"])


def test_the_choice_waits_for_every_candidate() -> None:
    with pytest.raises(SystemExit, match=r"no result for \['weighted'\]"):
        experiments.chosen([record("base", 0.9), record("smooth", 0.8)], CANDIDATES)


def test_final_runs_repeat_the_chosen_settings() -> None:
    spec = {"folds": [1, 2], "seeds": [7], "architectures": ["tf_efficientnet_lite1"]}
    runs = experiments.final_runs(spec, {"train.class_weights": True})
    assert runs == {
        "fold1": {"train.class_weights": True, "split.fold": 1},
        "fold2": {"train.class_weights": True, "split.fold": 2},
        "seed7": {"train.class_weights": True, "seed": 7},
        "lite1": {"train.class_weights": True, "model.name": "tf_efficientnet_lite1"}}


def test_wall_time_runs_from_the_queue_start_or_the_previous_end() -> None:
    records = [record("b", 0, finished=1300.0), record("a", 0, finished=1100.0),
               record("c", 0, finished=5000.0)]
    log = {"a": {"queue_started": 1000.0}, "b": {"queue_started": 1000.0},
           "c": {"queue_started": 4000.0}}  # c: queued later, after a pause
    experiments.wall_seconds(records, log)
    assert {r["name"]: r["wall_seconds"] for r in records} == {"a": 100.0, "b": 200.0,
                                                               "c": 1000.0}


def test_the_plan_names_real_params_and_a_known_run() -> None:
    plan = yaml.safe_load((REPO / "benchmarks/real/plans/b_tumours_experiments.yaml").read_text())
    experiments.run_spec(plan["run"])
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for settings in plan["search"].values():
        for key in settings:
            section, name = key.split(".")
            assert name in params[section], key
    assert set(plan["params"]) <= set(params)


def test_the_committed_task_b_figures_follow_from_their_runs() -> None:
    """benchmarks/results/b_tumours_experiments.json: the chosen recipe is the search's best
    on validation, and each summary is the mean and spread of the runs it names."""
    bench = json.loads((REPO / "benchmarks/results/b_tumours_experiments.json").read_text())
    plan = yaml.safe_load((REPO / "benchmarks/real/plans/b_tumours_experiments.yaml").read_text())
    runs = {run["name"]: run for run in bench["runs"]}
    validation = {name: next(iter(runs[name]["validation"].values())) for name in plan["search"]}
    assert bench["chosen_recipe"]["name"] == max(validation, key=validation.get)
    choice = bench["chosen_recipe"]["name"]
    groups = {"seeds": [choice, *(f"seed{s}" for s in plan["seeds"])],
              "folds": [choice, *(f"fold{f}" for f in plan["folds"])]}
    for group, names in groups.items():
        for subset in ("all", "unique"):
            scores = [runs[name]["test"][subset]["acc"] for name in names]
            summary = bench[group][subset]["acc"]
            assert summary["n"] == len(names)
            assert summary["mean"] == pytest.approx(np.mean(scores))
            assert summary["sd"] == pytest.approx(np.std(scores, ddof=1))
            assert summary["low"] < summary["mean"] < summary["high"]
    members = bench["fold_ensemble"]["members"]
    assert [m["acc"] for m in members] == [runs[n]["test"]["all"]["acc"] for n in groups["folds"]]
    assert bench["wall_seconds_total"] == pytest.approx(
        sum(run["wall_seconds"] or 0 for run in bench["runs"]), abs=0.2)
