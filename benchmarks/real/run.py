"""Run the unchanged pipeline on the original study's real datasets and record the results.

    python benchmarks/real/run.py RUN [RUN ...] [--data DIR] [--full] [--out DIR] [--images DIR]
    python benchmarks/real/run.py --list

RUN is one of the params files next to this script (a_original, b_tumours_clean, ...).
DIR holds `brain-tumor-mri/` and `breast-idc/` (default: $MEDIMG_REAL_DATA, else
../shared/datasets beside the repository). Each run gets a scratch workspace under
benchmarks/real/work/RUN/ with the repository's params.yaml merged with the run's
`params`, a folder view of the data built from links, and the stage scripts of dvc.yaml
run in order from it. The figures go to benchmarks/results/real_RUN.json
(real_RUN_full.json with --full, which also merges the run's `full_recipe`: the original
study's image size and epochs, meant for a GPU machine), and the shift report's contact
sheet of the test images most unlike their class's training images to
docs/images/shift-RUN.jpg.
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml
from PIL import Image

from medimg.docs import fmt, interval, results_file
from medimg.io import atomic_path, read_json, write_json
from medimg.params import load_params

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

STAGES = ("pretrained", "dedup", "split", "prepare", "train", "evaluate")
DATASETS = {"mri": "brain-tumor-mri", "idc": "breast-idc"}
IDC_CLASSES = {"0": "non_idc", "1": "idc"}


class UsageError(Exception):
    """A problem with the arguments or the data folder: one line and exit code 2."""


def data_root(given: str | None) -> Path:
    root = Path(given or os.environ.get("MEDIMG_REAL_DATA") or REPO.parent / "shared/datasets")
    if not root.is_dir():
        raise UsageError(f"data folder {root} does not exist; pass --data DIR or set "
                         "MEDIMG_REAL_DATA to the folder that holds brain-tumor-mri/ and "
                         "breast-idc/")
    return root


def dataset(root: Path, key: str) -> Path:
    folder = root / DATASETS[key]
    if not folder.is_dir() or not any(folder.iterdir()):
        raise UsageError(f"{folder} is missing or empty; this run needs the "
                         f"{DATASETS[key]} dataset there (see README, 'Results on real data')")
    return folder


def view_mri(root: Path, view: Path) -> None:
    """The MRI set as it is: Training/<class>/ and Testing/<class>/."""
    view.symlink_to(dataset(root, "mri"), target_is_directory=True)


def view_original(root: Path, view: Path) -> None:
    """Every MRI image as `mri`, every IDC patch as `breast_histo` (patient folders kept)."""
    view.mkdir()
    (view / "mri").symlink_to(dataset(root, "mri"), target_is_directory=True)
    (view / "breast_histo").symlink_to(dataset(root, "idc"), target_is_directory=True)


def view_idc(root: Path, view: Path) -> None:
    """IDC patches as <non_idc|idc>/<patient>/<file>, one link per patch, since the dataset
    nests the class folder inside the patient folder."""
    source = dataset(root, "idc")
    for patch in sorted(source.glob("*/[01]/*.png")):
        patient, label = patch.parts[-3], patch.parts[-2]
        target = view / IDC_CLASSES[label] / patient / patch.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(patch)


# View name: how to build it, and the datasets it needs.
VIEWS: dict[str, tuple[Callable[[Path, Path], None], tuple[str, ...]]] = {
    "mri": (view_mri, ("mri",)),
    "original": (view_original, ("mri", "idc")),
    "idc": (view_idc, ("idc",)),
}


def merged(base: dict, override: dict) -> dict:
    """`override` merged into `base` section by section (nested dicts merge, values replace)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (merged(base[key], value)
                    if isinstance(value, dict) and isinstance(base.get(key), dict) else value)
    return out


def read_yaml(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def run_spec(name: str) -> dict:
    path = HERE / f"{name}.yaml"
    if not path.is_file():
        raise UsageError(f"no run '{name}'; runs: {', '.join(available())}")
    spec = read_yaml(path)
    if spec.get("view") not in VIEWS:
        raise UsageError(f"{path}: view must be one of {sorted(VIEWS)}, not {spec.get('view')!r}")
    return spec


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def stage_commands() -> list[list[str]]:
    """The stage scripts of dvc.yaml, in pipeline order, as commands for this Python."""
    stages = read_yaml(REPO / "dvc.yaml")["stages"]
    return [[sys.executable, str(REPO / stages[name]["cmd"].split()[1])] for name in STAGES]


def run_stages(work: Path) -> dict[str, float]:
    seconds = {}
    (work / "logs").mkdir()
    for name, command in zip(STAGES, stage_commands(), strict=True):
        start = time.perf_counter()
        with (work / "logs" / f"{name}.log").open("w", encoding="utf-8") as log:
            done = subprocess.run(command, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                  check=False)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"  {name}: {seconds[name]} s", flush=True)
        if done.returncode != 0:
            tail = (work / "logs" / f"{name}.log").read_text(encoding="utf-8")[-2000:]
            raise SystemExit(f"run.py: stage {name} failed (exit {done.returncode}); "
                             f"log {work / 'logs' / f'{name}.log'}:\n{tail}")
    return seconds


def hardware() -> dict:
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def test_predictions(work: Path, classes: list[str]) -> dict:
    """The test set's labels and predictions as digit strings (label order of `classes`),
    and which test images have a copy outside the test split: enough to recompute any
    metric and compare runs without the workspace."""
    table = pd.read_csv(work / "metrics/predictions.csv", dtype=str, keep_default_na=False)
    test = table[table["split"] == "test"]
    leaked = set(pd.read_csv(work / "data/split/leaked_test.csv", dtype=str)["path"])
    index = {name: str(i) for i, name in enumerate(classes)}
    return {"label": "".join(test["class"].map(index)),
            "predicted": "".join(test["predicted"].map(index)),
            "has_copy_outside_test": "".join("1" if p in leaked else "0" for p in test["path"])}


def patients(work: Path, regex: str) -> dict:
    """How many patients the test split holds, and how many of them also have images in
    train or val: zero when the split is by patient."""
    table = pd.read_csv(work / "data/split/split.csv", dtype=str, keep_default_na=False)
    patient = table["path"].str.extract(regex, expand=False)
    seen = set(patient[table["split"].isin(["train", "val"])].dropna())
    test = set(patient[table["split"] == "test"].dropna())
    return {"test": len(test), "test_also_in_train_or_val": len(test & seen)}


def results(name: str, spec: dict, params: dict, work: Path, seconds: dict, full: bool) -> dict:
    metrics = work / "metrics"
    train = read_json(metrics / "report/train.json")
    evaluate = read_json(metrics / "report/report.json")["metrics"]
    return {
        "run": name,
        "task": spec["task"],
        "description": spec["description"],
        "recipe": "full" if full else "cpu_budget",
        "command": f"python benchmarks/real/run.py {name}{' --full' if full else ''}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                 capture_output=True, text=True, check=False).stdout.strip(),
        "hardware": hardware(),
        "params": {key: params[key] for key in ("classes", "data", "dedup", "split", "prepare",
                                                 "model", "train")},
        "stage_seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
        "dedup": read_json(metrics / "report/dedup.json"),
        "split": read_json(metrics / "report/split.json"),
        "train": {"epochs_run": train["epochs_run"],
                  "best": {"epoch": train["best_epoch"], train["monitor"]: train["best_value"],
                           "val_loss": train["best_val_loss"]}},
        "evaluate": {key: evaluate[key] for key in ("val", "test", "shortcut")},
        "shift": read_json(metrics / "report/shift.json"),
        "test_predictions": test_predictions(work, params["classes"]),
        **({"patients": patients(work, spec["patient_regex"])} if "patient_regex" in spec
           else {}),
    }


def run(name: str, root: Path, full: bool, work_root: Path, out_dir: Path,
        images_dir: Path) -> Path:
    spec = run_spec(name)
    work = work_root / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    build, _ = VIEWS[spec["view"]]
    build(root, work / "view")
    override = merged(spec["params"], spec.get("full_recipe", {})) if full else spec["params"]
    params = merged(read_yaml(REPO / "params.yaml"), override)
    params["data"]["raw_dir"] = "view"
    with (work / "params.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(params, handle, sort_keys=False)
    load_params(work / "params.yaml")  # a bad key in the run's file stops here, in one line
    print(f"{name}: workspace {work}", flush=True)
    seconds = run_stages(work)
    out = out_dir / f"real_{name}{'_full' if full else ''}.json"
    write_json(out, results(name, spec, params, work, seconds, full))
    # A JPEG copy for the docs: a tenth of the PNG's size.
    with (Image.open(work / "plots/evaluate/shift_most_unlike.png") as sheet,
          atomic_path(images_dir / f"shift-{name}{'-full' if full else ''}.jpg") as tmp):
        sheet.convert("RGB").save(tmp, format="JPEG", quality=85)
    print(f"{name}: {out} ({sum(seconds.values()):.0f} s)", flush=True)
    return out


NO_REAL_RUNS = "No results files yet: run `benchmarks/real/run.py`."


def real_runs(root: Path) -> dict[str, dict]:
    return {path.stem.removeprefix("real_"): results_file(root, path.name)
            for path in sorted((root / "benchmarks" / "results").glob("real_*.json"))}


def removed(dedup: dict) -> str:
    if "left_in" in dedup:
        left = dedup["left_in"]
        return (f"none (left in: {left['exact']} / {left['pixel']} / {left['near']} / "
                f"{left['conflict']})")
    return " / ".join(str(dedup[k]) for k in ("exact_duplicates", "pixel_duplicates",
                                                "near_duplicates", "conflicts"))


def recipe(run: dict) -> str:
    train, hardware = run["params"]["train"], run["hardware"]
    where = hardware["gpu"] or f"{hardware['cpu_count']} CPU cores"
    return (f"{run['params']['prepare']['image_size']} px, {run['train']['epochs_run']} of "
            f"{train['epochs']} epochs ({train['freeze_epochs']} frozen), {where}")


def real_table(runs: dict[str, dict]) -> list[str]:
    lines = ["| run | recipe | found / kept | removed: exact / pixel / near / conflict | "
             "train / val / test | val accuracy | test accuracy (95% CI) | "
             "test macro F1 (95% CI) | shortcut test accuracy | minutes | made (commit) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        dedup, split, test = run["dedup"], run["split"], run["evaluate"]["test"]
        shortcut = run["evaluate"]["shortcut"]["image_statistics"]["accuracy"]
        lines.append(
            f"| {name} | {recipe(run)} | {dedup['found']} / {dedup['kept']} | {removed(dedup)} | "
            f"{split['train']['n']} / {split['val']['n']} / {split['test']['n']} | "
            f"{fmt(run['evaluate']['val']['accuracy'])} | {interval(test, 'accuracy')} | "
            f"{interval(test, 'f1_macro')} | {fmt(shortcut)} | {run['total_seconds'] / 60:.0f} | "
            f"{run['date']} ({run['commit']}) |")
    return lines


def real_table_markdown(root: Path) -> str:
    """The real-data runs in short, for the README (the full table is in docs/)."""
    runs = real_runs(root)
    if not runs:
        return NO_REAL_RUNS
    lines = ["| run | train / val / test | test accuracy (95% CI) | shortcut test accuracy |",
             "|---|---|---|---|"]
    for name, run in runs.items():
        split, test = run["split"], run["evaluate"]["test"]
        shortcut = run["evaluate"]["shortcut"]["image_statistics"]["accuracy"]
        lines.append(f"| {name} | {split['train']['n']} / {split['val']['n']} / "
                     f"{split['test']['n']} | {interval(test, 'accuracy')} | {fmt(shortcut)} |")
    return "\n".join(lines)


def real_markdown(root: Path) -> str:
    """Every real-data run: recipe, de-duplication, split, scores, shortcut and time."""
    runs = real_runs(root)
    return "\n".join(real_table(runs)) if runs else NO_REAL_RUNS


def auc_cell(found: dict | None) -> str:
    """A domain classifier's ROC-AUC with its interval, marked where it shows a shift."""
    if found is None:
        return "n/a"
    mark = " **shift**" if found["low"] > 0.5 else ""
    return f"{found['auc']:.2f} ({found['low']:.2f} to {found['high']:.2f}){mark}"


def drifting(properties: dict, most: int = 3) -> str:
    """The properties that drift most (largest statistic with p < 0.05)."""
    found = sorted(((row["statistic"], name) for name, row in properties.items()
                    if row is not None and row["p_value"] < 0.05), reverse=True)[:most]
    return ", ".join(f"{name} {value:.2f}" for value, name in found) or "none"


def recall_cell(recall: dict) -> str:
    if recall["val"] is None or recall["test"] is None:
        return "n/a"
    return f"{recall['val']:.2f} to {recall['test']:.2f} ({recall['test'] - recall['val']:+.2f})"


def shift_table(shift: dict) -> list[str]:
    lines = ["| images | n train / other | domain AUC, features (95% CI) | domain AUC, "
             "properties | properties drifting most (D or TV, p < 0.05) | nearest training "
             "image, median | recall, val to test |", "|---|---|---|---|---|---|---|"]
    rows = [("all, validation", shift["overall"]["val"], None),
            ("all, test", shift["overall"]["test"], None)]
    for name, found in shift["per_class"].items():
        rows += [(f"{name}, validation", found["val"], None),
                 (f"{name}, test", found["test"], found["recall"])]
    for label, found, recall in rows:
        lines.append(f"| {label} | {found['n'][0]} / {found['n'][1]} | "
                     f"{auc_cell(found['domain_auc_features'])} | "
                     f"{auc_cell(found['domain_auc_properties'])} | "
                     f"{drifting(found['properties'])} | "
                     f"{found['nearest_training']['median']} | "
                     f"{'' if recall is None else recall_cell(recall)} |")
    return lines


def shift_findings(shift: dict) -> str:
    """The report in words: is test told apart from training (against the validation
    reference), which classes stand out, the largest recall drop, the contact sheet."""
    test, val = (shift["overall"][split]["domain_auc_features"] for split in ("test", "val"))
    shifted = [name for name, row in shift["per_class"].items()
               if row["test"]["domain_auc_features"] is not None
               and row["test"]["domain_auc_features"]["low"] > 0.5]
    drops = {name: row["recall"]["drop"] for name, row in shift["per_class"].items()
             if row["recall"]["drop"] is not None}
    words = [f"Training against test: ROC-AUC {test['auc']:.2f}; against validation, the "
             f"reference: {val['auc']:.2f}. Classes whose test images a classifier tells from "
             f"their training images (lower bound above 0.5): "
             f"{', '.join(shifted) if shifted else 'none'}."]
    if drops and max(drops.values()) >= 0.01:  # a drop worth naming
        worst = max(drops, key=drops.get)
        row = shift["per_class"][worst]
        words.append(f"The largest recall drop, {row['recall']['val']:.2f} to "
                     f"{row['recall']['test']:.2f}, is {worst}'s; its test images lie a median "
                     f"{row['test']['nearest_training']['median']:.1f} from the nearest "
                     f"training image of their class (validation: "
                     f"{row['val']['nearest_training']['median']:.1f}).")
    unlike = [row["class"] for row in shift["most_unlike"]]
    if unlike:
        common = max(set(unlike), key=unlike.count)
        wrong = sum(row["predicted"] != row["class"] for row in shift["most_unlike"])
        words.append(f"Of the {len(unlike)} test images most unlike their class's training "
                     f"images, {unlike.count(common)} are {common}, and {wrong} "
                     f"{'is' if wrong == 1 else 'are'} misclassified.")
    return " ".join(words)


def shift_markdown(root: Path) -> str:
    """Each real run's shift report: where its test images differ from its training
    images, class by class, beside each class's recall drop."""
    runs = {name: run for name, run in real_runs(root).items() if "shift" in run}
    if not runs:
        return "No results file with a shift report yet: run `benchmarks/real/run.py`."
    lines = []
    for name, run in runs.items():
        lines += [f"**{name}** ({run['date']}, commit {run['commit']}; contact sheet of its "
                  f"test images most unlike their class's training images: "
                  f"[shift-{name}.jpg](images/shift-{name}.jpg)):", "",
                  *shift_table(run["shift"]), "", shift_findings(run["shift"]), ""]
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run names (params files in benchmarks/real)")
    parser.add_argument("--data", help="folder with brain-tumor-mri/ and breast-idc/")
    parser.add_argument("--full", action="store_true", help="the original recipe (GPU)")
    parser.add_argument("--list", action="store_true", help="list the runs and exit")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="workspaces")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results",
                        help="folder for the results files")
    parser.add_argument("--images", type=Path, default=REPO / "docs/images",
                        help="folder for the shift report's contact sheet")
    args = parser.parse_args(argv)
    try:
        if args.list or not args.runs:
            for name in available():
                print(f"{name}: {run_spec(name)['description']}")
            return
        root = data_root(args.data)
        for name in args.runs:  # a typo or a missing dataset fails before hours of work
            for key in VIEWS[run_spec(name)["view"]][1]:
                dataset(root, key)
    except UsageError as err:
        parser.exit(2, f"run.py: {err}\n")
    for name in args.runs:
        run(name, root, args.full, args.work.resolve(), args.out, args.images)


if __name__ == "__main__":
    main()
