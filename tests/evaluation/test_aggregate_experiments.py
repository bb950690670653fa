"""scripts/aggregate_experiments.py on small fake `dvc exp show --json` records."""

import json
import math

import pytest

from scripts.aggregate_experiments import aggregate, experiment_records, main, select

T_975_2DF = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom


def run(name: str, seed: int, fold: int, acc: float | None, half: float = 0.05,
        error: str | None = None) -> dict:
    metrics = {} if acc is None else {"metrics/evaluate.json": {"data": {
        "acc": acc, "acc_lo": acc - half, "acc_hi": acc + half, "ece": 0.1 * acc}}}
    return {"rev": f"{name}-rev", "name": name, "experiments": None,
            "error": None if error is None else {"type": "RuntimeError", "msg": error},
            "data": {"params": {"params.yaml": {"data": {
                "seed": seed, "split": {"folds": 5, "fold": fold}}}}, "metrics": metrics}}


def shown(*runs: dict) -> list[dict]:
    """A workspace row and a baseline commit with one experiment per run, as DVC lists them."""
    workspace = run("workspace", 42, 0, 0.99)
    baseline = run("main", 42, 0, 0.98)
    baseline["experiments"] = [{"revs": [r], "name": r["name"], "executor": None} for r in runs]
    return [workspace, baseline]


def test_mean_spread_and_an_interval_with_training_and_test_error() -> None:
    records, skipped = experiment_records(shown(run("a", 1, 0, 0.70), run("b", 2, 0, 0.74),
                                                run("c", 3, 0, 0.72)))
    assert skipped == [] and [r["name"] for r in records] == ["a", "b", "c"]
    acc = aggregate(records)["acc"]
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(0.72)
    assert acc["sd"] == pytest.approx(0.02) and (acc["min"], acc["max"]) == (0.70, 0.74)
    training = T_975_2DF * 0.02 / math.sqrt(3)
    assert acc["training_half_width"] == pytest.approx(training)
    assert acc["test_half_width"] == pytest.approx(0.05)
    half = math.sqrt(training**2 + 0.05**2)
    assert (acc["low"], acc["high"]) == (pytest.approx(0.72 - half), pytest.approx(0.72 + half))
    assert acc["low"] < 0.72 - 0.05 and acc["high"] > 0.72 + training  # wider than either
    ece = aggregate(records)["ece"]  # no interval of its own: the training part only
    assert ece["test_half_width"] is None and ece["low"] is None and ece["sd"] > 0


def test_the_workspace_and_baseline_are_not_runs_and_unfinished_runs_are_named() -> None:
    records, skipped = experiment_records(shown(
        run("done", 1, 0, 0.7), run("queued", 2, 0, None), run("broken", 3, 0, None,
                                                               error="train failed")))
    assert [r["name"] for r in records] == ["done"]
    assert {s["name"]: s["reason"] for s in skipped} == {
        "queued": "no test metrics (queued, running or failed)", "broken": "train failed"}


def test_where_selects_by_param_and_names_an_unknown_key() -> None:
    records, _ = experiment_records(shown(run("f0", 1, 0, 0.7), run("f1", 1, 1, 0.8)))
    assert [r["name"] for r in select(records, {"split.fold": 1})] == ["f1"]
    with pytest.raises(SystemExit, match=r"no experiment has a param 'split\.fols'"):
        select(records, {"split.fols": 1})


def test_one_run_has_no_spread_and_no_interval() -> None:
    records, _ = experiment_records(shown(run("only", 1, 0, 0.7)))
    acc = aggregate(records)["acc"]
    assert acc["n"] == 1 and acc["sd"] is None and acc["low"] is None


def test_command_writes_strict_json_and_a_table(tmp_path, capsys) -> None:
    source = tmp_path / "shown.json"
    source.write_text(json.dumps(shown(run("a", 1, 0, 0.70), run("b", 2, 0, 0.74),
                                       run("q", 3, 0, None))))
    out = tmp_path / "summary.json"
    assert main(["--input", str(source), "--where", "seed=2", "--out", str(out)]) == 0
    written = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(name))
    assert [e["name"] for e in written["experiments"]] == ["b"]
    assert written["skipped"][0]["name"] == "q" and written["summary"]["acc"]["n"] == 1
    captured = capsys.readouterr()
    assert "| acc | 1 | 0.7400 | n/a |" in captured.out
    assert "skipped q" in captured.err
    with pytest.raises(SystemExit, match="no finished experiment matches"):
        main(["--input", str(source), "--where", "seed=9"])
