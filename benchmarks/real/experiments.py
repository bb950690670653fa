"""Seeds, folds, a recipe search and other architectures on real data, as DVC experiments.

    python -m benchmarks.real.experiments setup PLAN [--data DIR]
    python -m benchmarks.real.experiments queue PLAN search   # queues, starts the queue
    python -m benchmarks.real.experiments queue PLAN final    # after the search finished
    python -m benchmarks.real.experiments queue PLAN restart  # if the queue's worker stopped
    python -m benchmarks.real.experiments collect PLAN         # after the final runs

PLAN is a plan file in benchmarks/real/plans/ without its suffix (b_tumours_experiments).
`setup` clones this repository's last commit into benchmarks/real/work/PLAN/, sets its
params.yaml to the plan's run (benchmarks/real/RUN.yaml) and the plan's `params`, points
data.raw_dir at the dataset, runs the pipeline up to `prepare` and commits: the baseline of
the experiments. `queue search` queues one `dvc exp run --queue` per recipe candidate;
`queue final` picks the candidate with the best validation score and queues the seeds,
folds and architectures with its settings. Both start DVC's queue (`dvc queue start`, one
run at a time: two cores). `collect` aggregates the finished experiments, builds the fold
and the cross-architecture ensembles with scripts/ensemble.py, scores everything on the
whole test folder and on its de-duplicated part, and writes
benchmarks/results/PLAN.json with the wall time of every run.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmarks.real.run import (
    VIEWS,
    UsageError,
    data_root,
    hardware,
    merged,
    read_yaml,
    run_spec,
)
from medimg.docs import results_file
from medimg.evaluation.scores import full_metrics, headline
from medimg.io import read_json, write_json
from medimg.params import load_params
from scripts import aggregate_experiments as aggregate
from scripts import ensemble

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

SELECT = "best_value"  # metrics/report/train.json: train.monitor at the best epoch
QUEUED = "queued.json"  # in the workspace: when each experiment was queued and started
STALE_METRICS = ("metrics/train.json", "metrics/evaluate.json")


def plan_spec(name: str) -> dict:
    path = HERE / "plans" / f"{name}.yaml"
    if not path.is_file():
        raise UsageError(f"no plan '{name}' ({path})")
    return read_yaml(path)


def dvc(work: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=work, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed in {work}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def git(work: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=work, capture_output=True, text=True,
                          check=True).stdout


def setup(plan: str, spec: dict, data: str | None, work: Path) -> None:
    run = run_spec(spec["run"])
    view = work.parent / f"{plan}_data"
    if work.exists():
        raise UsageError(f"{work} exists; remove it to start the experiments afresh")
    build, _ = VIEWS[run["view"]]
    work.parent.mkdir(parents=True, exist_ok=True)
    if view.is_symlink():
        view.unlink()
    build(data_root(data), view)
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    params = merged(merged(read_yaml(REPO / "params.yaml"), run["params"]), spec["params"])
    params["data"]["raw_dir"] = str(view.resolve())
    with (work / "params.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(params, handle, sort_keys=False)
    load_params(work / "params.yaml")
    dvc(work, "repro", "prepare")
    for stale in STALE_METRICS:  # the clone's sample-data figures: no baseline figures
        (work / stale).unlink(missing_ok=True)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"{plan}: baseline of the experiments")
    print(f"{plan}: baseline committed in {work}")


def exp_records(work: Path) -> tuple[list[dict], list[dict]]:
    shown = json.loads(dvc(work, "exp", "show", "--json"))
    return aggregate.experiment_records(shown)


def chosen(records: list[dict], candidates: dict) -> tuple[str, dict]:
    """The search candidate with the highest validation score (ties: the earlier one in
    the plan). Test metrics play no part."""
    scores = {r["name"]: r["train"][SELECT] for r in records if r["name"] in candidates}
    missing = [name for name in candidates if name not in scores]
    if missing:
        raise SystemExit(f"the search has not finished: no result for {missing}")
    best = max(candidates, key=lambda name: (scores[name], -list(candidates).index(name)))
    return best, candidates[best]


def start_queue(work: Path) -> float:
    """`dvc queue start -j 1` (one run at a time: two cores); returns when it was started."""
    started = time.time()
    # The worker outlives this call: its output goes to `dvc queue logs`, not to a pipe
    # that would hold this script until the queue is empty.
    subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "-j", "1"], cwd=work,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return started


def queue_runs(work: Path, runs: dict[str, dict]) -> None:
    """`dvc exp run --queue` for each run (name: -S settings), then start DVC's queue."""
    log = read_json(work / QUEUED) if (work / QUEUED).exists() else {}
    runs = {name: settings for name, settings in runs.items() if name not in log}
    if not runs:
        raise UsageError(f"every run of this phase is already queued (see {work / QUEUED})")
    for name, settings in runs.items():
        flags = [item for key, value in settings.items()
                 for item in ("-S", f"{key}={json.dumps(value)}")]
        dvc(work, "exp", "run", "--queue", "--name", name, *flags, "evaluate")
        log[name] = {"settings": settings}
    started = start_queue(work)
    for name in runs:
        log[name]["queue_started"] = started
    write_json(work / QUEUED, log)
    print(f"queued {', '.join(runs)}; `dvc queue status` in {work} shows progress")


def restart_queue(work: Path) -> None:
    """Start DVC's queue again after its worker stopped, the time of the restart recorded
    as the queue start of every run without a result yet."""
    records, _ = exp_records(work)
    log = read_json(work / QUEUED)
    waiting = [name for name in log if name not in {r["name"] for r in records}]
    started = start_queue(work)
    for name in waiting:
        log[name]["queue_started"] = started
    write_json(work / QUEUED, log)
    print(f"restarted the queue for {', '.join(waiting) or 'nothing'}")


def final_runs(spec: dict, recipe: dict) -> dict[str, dict]:
    runs = {f"fold{fold}": {**recipe, "split.fold": fold} for fold in spec["folds"]}
    runs |= {f"seed{seed}": {**recipe, "seed": seed} for seed in spec["seeds"]}
    runs |= {arch.removeprefix("tf_efficientnet_"): {**recipe, "model.name": arch}
             for arch in spec["architectures"]}
    return runs


def train_report(work: Path, rev: str) -> dict:
    import dvc.api

    with dvc.api.open("metrics/report/train.json", repo=str(work), rev=rev) as handle:
        return json.load(handle)


def test_scores(work: Path, rev: str, test: pd.DataFrame, classes: list[str],
                resamples: int, seed: int) -> dict:
    """A run's headline test metrics on the whole test folder and without its copies."""
    import dvc.api

    with dvc.api.open("metrics/predictions.csv", repo=str(work), rev=rev) as handle:
        predictions = pd.read_csv(handle, keep_default_na=False)
    rows = predictions[predictions["split"] == "test"].set_index("path").loc[test["path"]]
    probs = rows[[f"prob_{name}" for name in classes]].to_numpy()
    probs = probs / probs.sum(axis=1, keepdims=True)  # the file rounds to 6 decimals
    labels = test["label"].to_numpy()
    unique = (test["test_copy"] == "").to_numpy()
    return {subset: headline(full_metrics(labels[mask], probs[mask], classes, resamples, seed))
            for subset, mask in (("all", np.ones(len(test), bool)), ("unique", unique))}


def wall_seconds(records: list[dict], log: dict) -> None:
    """Each run's wall time: from the queue's start or the previous run's end, whichever
    is later, to its own end (the queue runs one at a time)."""
    previous = 0.0
    for record in sorted(records, key=lambda r: r["finished"]):
        start = max(log.get(record["name"], {}).get("queue_started", 0.0), previous)
        record["wall_seconds"] = round(record["finished"] - start, 1) if start else None
        previous = record["finished"]


def summary(records: list[dict], subset: str) -> dict:
    return aggregate.aggregate([{"metrics": r["test"][subset]} for r in records])


def ensemble_scores(work: Path, names: list[str], records: dict[str, dict], out: str) -> dict:
    revs = [flag for name in names for flag in ("--rev", records[name]["rev"])]
    target = work / "ensembles" / out
    ensemble.main([str(target.with_suffix("")), *revs, "--tta", "--out", str(target)])
    return read_json(target)


def collect(plan: str, spec: dict, work: Path) -> Path:
    os.chdir(work)  # scripts/ensemble.py scores the workspace's prepared test split
    params = load_params(work / "params.yaml")
    records, skipped = exp_records(work)
    shown = {r["name"]: r for r in records}
    test = pd.read_csv(work / "data/prepared/test.csv", dtype={"test_copy": str},
                       keep_default_na=False)
    for record in records:
        record["train"] = train_report(work, record["rev"])
        record["test"] = test_scores(work, record["rev"], test, params.classes,
                                     params.evaluate.bootstrap_resamples, params.seed)
        record["finished"] = timestamp(work, record["rev"])
    log = read_json(work / QUEUED)
    wall_seconds(records, log)
    choice, recipe = chosen(records, spec["search"])
    final = final_runs(spec, recipe)
    seeds = [choice, *(f"seed{s}" for s in spec["seeds"])]
    folds = [choice, *(f"fold{f}" for f in spec["folds"])]
    archs = [choice, *(a.removeprefix("tf_efficientnet_") for a in spec["architectures"])]
    missing = [name for name in {*final, *spec["search"]} if name not in shown]
    if missing:
        raise SystemExit(f"not finished yet: {sorted(missing)}; skipped: {skipped}")
    run_rows = [{"name": r["name"], "rev": r["rev"][:7], "settings": log[r["name"]]["settings"],
                 "validation": {r["train"]["monitor"]: r["train"][SELECT]},
                 "epochs_run": r["train"]["epochs_run"],
                 "training_seconds": r["train"].get("training_seconds"),
                 "wall_seconds": r["wall_seconds"], "test": r["test"]}
                for r in records if r["name"] in log]
    result = {
        "plan": plan, "run": spec["run"],
        "command": f"python -m benchmarks.real.experiments collect {plan}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "hardware": hardware(),
        "baseline_params": {key: getattr(params, key).model_dump()
                            for key in ("dedup", "split", "prepare", "model", "train")},
        "test_images": {"all": len(test), "unique": int((test["test_copy"] == "").sum())},
        "chosen_recipe": {"name": choice, "settings": recipe},
        "goal": spec["goal"],
        "runs": run_rows,
        "seeds": {subset: summary([shown[n] for n in seeds], subset)
                  for subset in ("all", "unique")},
        "folds": {subset: summary([shown[n] for n in folds], subset)
                  for subset in ("all", "unique")},
        "fold_ensemble": ensemble_scores(work, folds, shown, "folds.json"),
        "architecture_ensemble": ensemble_scores(work, archs, shown, "architectures.json"),
        "skipped": skipped,
        "wall_seconds_total": round(sum(r["wall_seconds"] or 0 for r in run_rows), 1),
    }
    out = REPO / "benchmarks/results" / f"{plan}.json"
    write_json(out, result)
    print(f"{plan}: wrote {out}")
    return out


def timestamp(work: Path, rev: str) -> float:
    return float(git(work, "log", "-1", "--format=%ct", rev).strip())


EXPERIMENTS_FILE = "b_tumours_experiments.json"

NO_EXPERIMENTS = ("No results file yet: run `benchmarks/real/experiments.py` "
                  "(docs/real-data.md).")


def spread(summary: dict) -> str:
    """A metric over runs: mean, sd and the interval for training plus test error."""
    sd = "n/a" if summary["sd"] is None else f"{summary['sd']:.3f}"
    span = ("n/a" if summary["low"] is None
            else f"{summary['low']:.3f} to {summary['high']:.3f}")
    return f"{summary['mean']:.3f} (sd {sd}; {span})"


def combined(row: dict) -> str:
    """An ensemble's accuracy with its interval, and its paired gain over the best member."""
    gain = row["minus_best_member"]["acc"]
    return (f"{row['acc']:.3f} ({row['acc_lo']:.3f} to {row['acc_hi']:.3f}); "
            f"{gain['value']:+.3f} ({gain['low']:+.3f} to {gain['high']:+.3f})")


def experiment_rows(bench: dict, flips: bool) -> list[tuple[str, str, str]]:
    """(what, on all test images, on the de-duplicated ones) for each result; with `flips`
    also the ensembles averaged over each image's flips."""
    seeds, folds = bench["seeds"], bench["folds"]
    rows = [(f"`{bench['chosen_recipe']['name']}`, {seeds['all']['acc']['n']} seeds",
             spread(seeds["all"]["acc"]), spread(seeds["unique"]["acc"])),
            (f"{folds['all']['acc']['n']} folds", spread(folds["all"]["acc"]),
             spread(folds["unique"]["acc"]))]
    for key, label in (("fold_ensemble", "fold ensemble"),
                       ("architecture_ensemble", "architecture ensemble")):
        result = bench[key]
        for variant in ("ensemble", "ensemble_tta") if flips else ("ensemble",):
            extra = " + flips" if variant.endswith("tta") else ""
            rows.append((f"{label} ({len(result['members'])}){extra}", combined(result[variant]),
                         combined(result["without_test_copies"][variant])))
    return rows


def experiments_table(bench: dict, flips: bool) -> list[str]:
    images = bench["test_images"]
    return [f"| task B accuracy | {images['all']} `Testing` images | {images['unique']} "
            "without their copies |", "|---|---|---|",
            *(f"| {what} | {everything} | {unique} |"
              for what, everything, unique in experiment_rows(bench, flips))]


def goal_line(bench: dict) -> str:
    goal = bench["goal"]
    ensembles = {f"{key.replace('_', ' ')}{' + flips' if variant.endswith('tta') else ''}":
                 bench[key][variant] for key in ("fold_ensemble", "architecture_ensemble")
                 for variant in ("ensemble", "ensemble_tta")}
    name, best = max(ensembles.items(), key=lambda item: item[1]["acc"])
    met = best["acc"] >= goal["accuracy"] and best["acc_lo"] > goal["beat"]
    return (f"Goal: an ensemble at {goal['accuracy']}+ on all {bench['test_images']['all']}, "
            f"its lower bound above {goal['beat']} ({goal['source']}): "
            f"{'reached' if met else 'not reached'}; best: {name}, {best['acc']:.3f} "
            f"({best['acc_lo']:.3f} to {best['acc_hi']:.3f}).")


def experiments_markdown(root: Path) -> str:
    """Task B's repeated runs and ensembles, accuracy only, for the README."""
    path = root / "benchmarks/results" / EXPERIMENTS_FILE
    if not path.exists():
        return NO_EXPERIMENTS
    bench = results_file(root, EXPERIMENTS_FILE)
    return "\n".join([*experiments_table(bench, flips=False), "", goal_line(bench)])


def experiments_detail_markdown(root: Path) -> str:
    """Every run of task B's experiments: settings, validation score, test scores and
    wall time, then the aggregated table."""
    path = root / "benchmarks/results" / EXPERIMENTS_FILE
    if not path.exists():
        return NO_EXPERIMENTS
    bench = results_file(root, EXPERIMENTS_FILE)
    images = bench["test_images"]
    lines = [f"| experiment | `-S` settings | validation | epochs | test accuracy, "
             f"{images['all']} images | test macro F1 | test accuracy, {images['unique']} "
             "images | minutes (training) |", "|---|---|---|---|---|---|---|---|"]
    for run in bench["runs"]:
        settings = ", ".join(f"{k}={v}" for k, v in run["settings"].items()) or "(baseline)"
        (monitor, value), = run["validation"].items()
        test, unique = run["test"]["all"], run["test"]["unique"]
        minutes = "n/a" if run["wall_seconds"] is None else f"{run['wall_seconds'] / 60:.1f}"
        lines.append(
            f"| {run['name']} | {settings} | {monitor} {value:.4f} | {run['epochs_run']} | "
            f"{test['acc']:.4f} ({test['acc_lo']:.4f} to {test['acc_hi']:.4f}) | "
            f"{test['f1']:.4f} | {unique['acc']:.4f} | {minutes} "
            f"({run['training_seconds'] / 60:.1f}) |")
    lines += ["", f"All runs: {bench['wall_seconds_total'] / 60:.0f} minutes on "
              f"{bench['hardware']['cpu_count']} CPU cores. Repeated runs: mean (sd; 95% "
              "interval for training and test error). Ensembles: accuracy (95% CI); minus the "
              "best member (paired 95% CI).", "", *experiments_table(bench, flips=True), "",
              goal_line(bench)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["setup", "queue", "collect"])
    parser.add_argument("plan", help="a plan file in benchmarks/real/plans, without .yaml")
    parser.add_argument("phase", nargs="?", choices=["search", "final", "restart"],
                        help="for queue (restart: after the queue's worker stopped)")
    parser.add_argument("--data", help="folder with brain-tumor-mri/ and breast-idc/")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="workspaces")
    args = parser.parse_args(argv)
    try:
        spec = plan_spec(args.plan)
        work = (args.work / args.plan).resolve()
        if args.action == "setup":
            setup(args.plan, spec, args.data, work)
        elif args.action == "queue" and args.phase == "search":
            queue_runs(work, spec["search"])
        elif args.action == "queue" and args.phase == "final":
            records, _ = exp_records(work)
            for record in records:
                record["train"] = train_report(work, record["rev"])
            choice, recipe = chosen(records, spec["search"])
            print(f"chosen recipe: {choice} {recipe}")
            queue_runs(work, final_runs(spec, recipe))
        elif args.action == "queue" and args.phase == "restart":
            restart_queue(work)
        elif args.action == "queue":
            raise UsageError("queue needs a phase: search, final or restart")
        else:
            collect(args.plan, spec, work)
    except UsageError as err:
        parser.exit(2, f"experiments.py: {err}\n")


if __name__ == "__main__":
    main()
