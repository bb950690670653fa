"""The out-of-distribution flag on sources it never saw, on the default model and on a model
trained on the real datasets; writes benchmarks/results/ood_tradeoff.json (default) or
ood_tradeoff_real.json (--real).

    python benchmarks/ood_tradeoff.py [--data DIR] [--per-class 100]
    python benchmarks/real/run.py a_original && python benchmarks/ood_tradeoff.py --real

Default: reads what `dvc repro` leaves in the working tree (models/, data/prepared,
metrics/evaluate.json) and two real datasets the pipeline never reads: DIR holds
brain-tumor-mri/ and breast-idc/ (default $MEDIMG_REAL_DATA, else ../shared/datasets).
--real: the workspace benchmarks/real/work/a_original (a model trained on those datasets),
after running the ood stage there; its held-out MRI and H&E are the default sample's (this
working tree's data/prepared), which it never saw.

The protocol, for each method tried:
- Reference: the training split and jittered copies of it (drawn down to the pipeline's
  reference_size); the logistic regression is fitted on it against the outlier exposure.
- Threshold: the score that accepts accept_share of the calibration sources, in-
  distribution images no method fits on (packaged MRI from other scanners, jittered
  copies of the validation split), each source weighted equally.
- Tune: a kNN method's k (of params.yaml's k_candidates) maximises the share of
  outlier-exposure images flagged (mean over their package files) at that threshold:
  packaged images, none of them held out, as the ood stage tunes it.
- Report, per held-out source with 95% intervals, then the threshold curve on the held-out
  sources and its best point: chosen looking at them, an upper bound, not a figure to
  quote. The method the pipeline ships was kept for what it did on held-out sources and
  for its cost (docs/serving.md says why); it must reproduce the stored detector and
  metrics/evaluate.json (else run `dvc repro` first).
"""

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch

from medimg.data.hashing import file_sha256
from medimg.data.images import load_rgb
from medimg.data.prepared import resize_square
from medimg.devices import reproducible_cpu
from medimg.docs import results_file
from medimg.evaluation.logistic import float64_tensor, logistic_fit
from medimg.evaluation.ood import accepting_threshold, drawn_rows
from medimg.evaluation.ood_figures import CURVE_POINTS, ood_headline
from medimg.evaluation.ood_fitting import FittingSet, fitting_set, tuned_detector
from medimg.evaluation.references import everyday, model_inputs, other_modalities
from medimg.evaluation.scores import acceptance_curve, ood_acceptance, ood_auroc
from medimg.inference import Classifier, as_tensor, in_batches, load_classifier, normalise
from medimg.io import read_json, write_json
from medimg.params import OodParams, Params, load_params
from medimg.training.models import ModelConfig, create_model

REPO = Path(__file__).resolve().parents[1]
REAL_WORK = REPO / "benchmarks/real/work/a_original"
OOD_FILES = {"default": "ood_tradeoff.json", "real": "ood_tradeoff_real.json"}
MRI_FOLDERS = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
SAMPLE_SOURCES = {"sample/mri": "mri/", "sample/stardist_histo": "breast_histo/stardist",
                  "sample/skimage_ihc": "breast_histo/skimage_ihc"}
LOGISTIC_PENALTY = 1.0  # the logistic detector's, as shipped before issue 42
PRETRAINED = "tf_efficientnet_lite0"  # ImageNet weights that ship in a package
# Issue 42's goals, on held-out sources; the default model's MRI has none ("as high as the
# protocol honestly gives"): its reference is two volumes.
GOALS = {"default": {"histology_accepted": 0.90, "everyday_flagged": 0.90,
                     "test_accepted": 0.95},
         "real": {"mri_accepted": 0.90, "histology_accepted": 0.90,
                  "everyday_flagged": 0.90, "test_accepted": 0.95}}
# The held-out sources each goal reads, pooled.
KINDS = {"default": {"mri": [f"brain-tumor-mri/{folder}" for folder in MRI_FOLDERS],
                     "histology": ["breast-idc"], "everyday": ["everyday"], "test": ["test"]},
         "real": {"mri": ["sample/mri"],
                  "histology": ["sample/stardist_histo", "sample/skimage_ihc"],
                  "everyday": ["everyday"], "test": ["test"]}}
PIPELINE = "knn_stages"
METHODS = {
    "knn_stages": "kNN cosine distance on the model's stage features (the pipeline's)",
    "knn_stages_each": "kNN on the model's stage features, each stage scaled to length 1",
    "knn_pretrained": "kNN on the ImageNet-pretrained Lite0's stage features (a second "
                      "network)",
    "knn_pretrained_prelogits": "kNN on the pretrained Lite0's stage and pre-logit features",
    "stage_logistic": "logistic regression on the stage features against the outlier "
                      "exposure (the detector before issue 42), threshold set as the kNN's",
    "combined": "flagged by the pretrained kNN (a medical image at all?) or by the "
                "logistic regression (this task's images?), each on its calibration ranks",
}

Scorer = Callable[[np.ndarray], np.ndarray]  # features to scores, higher: less familiar


@dataclass(frozen=True)
class Features:
    """One feature space's fitting set, validation split and held-out sets."""
    fitting: FittingSet
    val: np.ndarray
    sets: dict[str, np.ndarray]


def resized(paths: list[Path], size: int, resize: str) -> np.ndarray:
    return np.stack([resize_square(load_rgb(path), size, resize) for path in paths])


def real_sets(root: Path, per_class: int, seed: int, size: int,
              resize: str) -> dict[str, np.ndarray]:
    """The default model's held-out real images, as its inputs: PER_CLASS of each class
    folder of the Brain Tumor MRI set, one patch per patient of the breast IDC set."""
    rng = np.random.default_rng(seed)
    sets = {}
    for folder in MRI_FOLDERS:
        files = sorted((root / "brain-tumor-mri").glob(f"*/{folder}/*"))
        if len(files) < per_class:
            sys.exit(f"{root / 'brain-tumor-mri'}: {len(files)} images of {folder}, "
                     f"{per_class} needed; pass --data DIR")
        chosen = sorted(rng.choice(len(files), per_class, replace=False))
        sets[f"brain-tumor-mri/{folder}"] = resized([files[i] for i in chosen], size, resize)
    patients = sorted(path for path in (root / "breast-idc").iterdir() if path.is_dir())
    patches = [sorted(patient.rglob("*.png")) for patient in patients]
    sets["breast-idc"] = resized([files[rng.integers(len(files))] for files in patches
                                  if files], size, resize)
    return sets


def sample_sets(prepared: Path, size: int) -> dict[str, np.ndarray]:
    """The real-data model's held-out MRI and histology: every image of the default sample
    (this working tree's prepared splits), by the source its path names."""
    parts = [(np.load(prepared / f"{split}.npy"), pd.read_csv(prepared / f"{split}.csv"))
             for split in ("train", "val", "test")]
    pixels = np.concatenate([images for images, _ in parts])
    if pixels.shape[1] != size:
        sys.exit(f"{prepared}: the sample is {pixels.shape[1]} px, the model takes {size}")
    paths = pd.concat([table for _, table in parts])["path"].to_numpy()
    return {name: pixels[np.char.startswith(paths.astype(str), prefix)]
            for name, prefix in SAMPLE_SOURCES.items()}


def pretrained_features(config: ModelConfig,
                        batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """The ImageNet-pretrained Lite0's stage features (pooled, as the model's) and its
    pre-logit features after them, from one forward pass."""
    model = create_model(PRETRAINED, "packaged", len(config.classes),
                         packaged_dir=REPO / "models/pretrained").eval()

    def features(images: np.ndarray) -> np.ndarray:
        found = []
        with torch.inference_mode():
            for batch in in_batches(images, batch_size):
                final, stages = model.forward_intermediates(
                    normalise(as_tensor(batch), config.mean, config.std))
                found.append(torch.cat([*(stage.mean(dim=(2, 3)) for stage in stages),
                                        model.forward_head(final, pre_logits=True)], dim=1))
        return torch.cat(found).float().numpy()
    return features


def per_stage_unit(widths: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    """Stage features with each stage's block scaled to length 1."""
    edges = np.cumsum(widths)[:-1]

    def transform(features: np.ndarray) -> np.ndarray:
        blocks = np.split(features, edges, axis=1)
        return np.concatenate([b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True),
                                              1e-12) for b in blocks], axis=1)
    return transform


def logistic_scorer(space: Features, settings: OodParams, seed: int) -> Scorer:
    """The log-odds of "outlier exposure" from a logistic regression of the reference (as
    drawn for the kNN) against the outlier-exposure images."""
    kept = drawn_rows(len(space.fitting.reference), settings.reference_size, seed)
    both = float64_tensor(np.concatenate([space.fitting.reference[kept],
                                          space.fitting.outliers]))
    mean, scale = both.mean(dim=0), both.std(dim=0).clamp_min(1e-12)
    labels = torch.cat([torch.zeros(len(kept)),
                        torch.ones(len(space.fitting.outliers))]).double()
    weights = logistic_fit((both - mean) / scale, labels, LOGISTIC_PENALTY)

    def score(features: np.ndarray) -> np.ndarray:
        standard = (float64_tensor(features) - mean) / scale
        return (standard @ weights[:-1] + weights[-1]).numpy()
    return score


def calibrated_rank(score: Scorer, calibration: dict[str, np.ndarray]) -> Scorer:
    """A score as the mean over calibration sources of the share of each source scoring
    below it: two scores on this scale can be compared."""
    sorted_scores = [np.sort(score(values)) for values in calibration.values()]

    def rank(features: np.ndarray) -> np.ndarray:
        values = score(features)
        return np.mean([np.searchsorted(s, values, side="left") / len(s)
                        for s in sorted_scores], axis=0)
    return rank


def calibrated(score: Scorer, calibration: dict[str, np.ndarray],
               settings: OodParams) -> float:
    return accepting_threshold({name: score(values) for name, values in calibration.items()},
                               settings.accept_share)


def pooled(scores: dict[str, np.ndarray], threshold: float, kinds: dict) -> dict:
    """Each goal's pooled held-out share (accepted, or flagged for the everyday set)."""
    shares = {}
    for kind, names in kinds.items():
        values = np.concatenate([scores[name] for name in names])
        accepted = ood_acceptance({kind: values}, threshold)[kind]
        if kind == "everyday":
            shares[f"{kind}_flagged"] = {"n": accepted["n"], "share": 1 - accepted["accepted"],
                                         "low": 1 - accepted["accepted_high"],
                                         "high": 1 - accepted["accepted_low"]}
        else:
            shares[f"{kind}_accepted"] = {"n": accepted["n"], "share": accepted["accepted"],
                                          "low": accepted["accepted_low"],
                                          "high": accepted["accepted_high"]}
    return shares


def best_point(curve: list[dict], kinds: dict) -> dict:
    """The threshold whose worst goal share (MRI, histology accepted, each the mean over
    its sources; everyday flagged) is highest on the held-out curve: chosen looking at the
    held-out sets."""
    def kind_share(point: dict, kind: str) -> float:
        return float(np.mean([point[f"{name}_accepted"] for name in kinds[kind]]))

    def worst(point: dict) -> float:
        return min(kind_share(point, "mri"), kind_share(point, "histology"),
                   1 - point["everyday_accepted"])
    point = max(curve, key=worst)
    return {"threshold": point["threshold"],
            "mri_accepted": round(kind_share(point, "mri"), 4),
            "histology_accepted": round(kind_share(point, "histology"), 4),
            "everyday_flagged": round(1 - point["everyday_accepted"], 4),
            "test_accepted": point["test_accepted"]}


def held_out(score: Scorer, threshold: float, sets: dict[str, np.ndarray],
             kinds: dict) -> dict:
    scores = {name: score(features) for name, features in sets.items()}
    inside = np.concatenate([scores[n] for k in ("mri", "histology") for n in kinds[k]])
    curve = acceptance_curve(scores, CURVE_POINTS)
    return {"threshold": threshold, "sources": ood_acceptance(scores, threshold),
            "goals": pooled(scores, threshold, kinds),
            "auroc_everyday_vs_real": ood_auroc(inside, scores["everyday"]),
            "curve": curve, "best_point": best_point(curve, kinds)}


def check_against_pipeline(model_dir: Path, method: dict, metrics: Path | None,
                           scores: dict[str, np.ndarray]) -> None:
    """Stop when the pipeline's method does not reproduce the stored detector (and, for
    the default model, the evaluate stage's metrics)."""
    stored = read_json(model_dir / "ood.json")
    rebuilt = {"k": method["k"], "threshold": method["threshold"]}
    if {key: stored[key] for key in rebuilt} != rebuilt:
        sys.exit(f"{model_dir / 'ood.json'}: k {stored['k']}, threshold {stored['threshold']} "
                 f"but {rebuilt} rebuilt; run dvc repro (or the ood stage) first")
    threshold = method["threshold"]
    if metrics is None:
        return
    metric = read_json(metrics)
    figures = {"sets": ood_acceptance(scores, threshold)}
    for name, value in ood_headline(figures).items():
        if metric.get(name) != value:
            sys.exit(f"{metrics}: {name} {metric.get(name)} but {value} rebuilt; run "
                     "dvc repro first")


def machine() -> dict:
    return {"cpus": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__}


def feature_space(extract: Callable[[np.ndarray], np.ndarray], config: ModelConfig,
                  params: Params, prepared: Path, images: dict[str, np.ndarray]) -> Features:
    val = np.load(prepared / "val.npy")
    fitting = fitting_set(extract, config, np.load(prepared / "train.npy"), val, params.ood,
                          params.seed)
    return Features(fitting, extract(val),
                    {name: extract(pixels) for name, pixels in images.items()})


def transformed(space: Features, transform: Callable[[np.ndarray], np.ndarray]) -> Features:
    fitting = space.fitting
    return Features(FittingSet(transform(fitting.reference),
                               {n: transform(v) for n, v in fitting.calibration.items()},
                               transform(fitting.outliers), fitting.outlier_sources),
                    transform(space.val), {n: transform(v) for n, v in space.sets.items()})


def measure(classifier: Classifier, params: Params, prepared: Path,
            images: dict[str, np.ndarray], kinds: dict) -> tuple[dict, tuple[Scorer, Features]]:
    """Every method, tuned, on the held-out sources; and the pipeline's scorer with its
    features."""
    settings, batch, config = params.ood, params.ood.batch_size, classifier.config
    pretrained = pretrained_features(config, batch)
    # Every image through both networks once; each method reads its columns.
    every = feature_space(lambda x: np.concatenate(
        [classifier.predict_with_features(x, batch)[1], pretrained(x)], axis=1),
        config, params, prepared, images)
    widths = [info["num_chs"] for info in classifier.backend.model.feature_info]
    stage, edge = sum(widths), 2 * sum(widths)
    spaces = {"knn_stages": transformed(every, lambda f: f[:, :stage]),
              "knn_pretrained": transformed(every, lambda f: f[:, stage:edge]),
              "knn_pretrained_prelogits": transformed(every, lambda f: f[:, stage:])}
    spaces["knn_stages_each"] = transformed(spaces["knn_stages"], per_stage_unit(widths))
    results, scorers = {}, {}
    for name in ("knn_stages", "knn_stages_each", "knn_pretrained", "knn_pretrained_prelogits"):
        # As the ood stage tunes its k: on the outlier exposure (packaged, not held out).
        space = spaces[name]
        detector = tuned_detector(space.fitting, space.val, settings, params.seed)
        scorers[name] = (detector.score, space)
        results[name] = {"k": detector.k,
                         "outliers_flagged_by_k": detector.summary["outliers_flagged_by_k"],
                         **held_out(detector.score, detector.threshold, space.sets, kinds)}
    space = spaces["knn_stages"]
    logistic = logistic_scorer(space, settings, params.seed)
    results["stage_logistic"] = held_out(
        logistic, calibrated(logistic, space.fitting.calibration, settings), space.sets, kinds)
    pre_score, pre_space = scorers["knn_pretrained"]
    pre_rank = calibrated_rank(pre_score, pre_space.fitting.calibration)
    logistic_rank = calibrated_rank(logistic, space.fitting.calibration)

    def combined(features: np.ndarray) -> np.ndarray:
        # Both networks' columns of the same images.
        return np.maximum(logistic_rank(features[:, :stage]),
                          pre_rank(features[:, stage:edge]))

    results["combined"] = held_out(
        combined, calibrated(combined, every.fitting.calibration, settings), every.sets, kinds)
    return results, scorers[PIPELINE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true",
                        help=f"the real-data model in {REAL_WORK.relative_to(REPO)}")
    parser.add_argument("--data", type=Path, default=Path(
        os.environ.get("MEDIMG_REAL_DATA") or REPO.parent / "shared/datasets"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    which = "real" if args.real else "default"
    work = REAL_WORK if args.real else REPO
    if args.real:
        if not (work / "models/model.json").is_file():
            sys.exit(f"{work}: no model; run python benchmarks/real/run.py a_original first")
        # The ood stage, as dvc repro runs it, in the real run's workspace.
        subprocess.run([sys.executable, str(REPO / "stages/ood.py")], cwd=work, check=True)
    params = load_params(work / "params.yaml")
    start = time.perf_counter()
    reproducible_cpu(params.cpu_threads)
    classifier = load_classifier(work / "models")
    config = classifier.config
    prepared = work / "data/prepared"
    held = (sample_sets(REPO / "data/prepared", config.image_size) if args.real else
            real_sets(args.data, args.per_class, params.seed, config.image_size,
                      config.resize))
    packaged = {"everyday": everyday(), "other_modalities": other_modalities()}
    images = {"test": np.load(prepared / "test.npy"), **held,
              **{name: model_inputs(found, config) for name, found in packaged.items()}}
    methods, (score, space) = measure(classifier, params, prepared, images, KINDS[which])
    pipeline = methods[PIPELINE]
    check_against_pipeline(work / "models", pipeline,
                           None if args.real else work / "metrics/evaluate.json",
                           {name: score(space.sets[name]) for name in ("test", "everyday")})
    write_json(args.out or REPO / "benchmarks/results" / OOD_FILES[which], {
        "command": shlex.join(["python", "benchmarks/ood_tradeoff.py", *sys.argv[1:]]),
        "machine": machine(), "wall_seconds": round(time.perf_counter() - start, 1),
        "model": which, "model_sha256": file_sha256(work / "models/model.safetensors"),
        "held_out": {name: len(found) for name, found in held.items()},
        "goals": GOALS[which], "kinds": KINDS[which], "pipeline": PIPELINE,
        "descriptions": METHODS, "methods": methods})
    for name, row in methods.items():
        print(f"{name}: threshold {row['threshold']:g}, " + ", ".join(
            f"{goal} {figure['share']:.3f}" for goal, figure in row["goals"].items()))


SOURCE_NAMES = {"test": "test split", "breast-idc": "breast IDC patches, one per patient",
                "everyday": "everyday photographs and graphics (flagged)",
                "other_modalities": "other modalities: retina, CT, ultrasound, microscopy "
                                    "(flagged)",
                "sample/mri": "the sample's MRI (packaged volumes)",
                "sample/stardist_histo": "the sample's H&E (stardist's slide)",
                "sample/skimage_ihc": "the sample's IHC tiles (scikit-image's slide)",
                **{f"brain-tumor-mri/{folder}": f"Brain Tumor MRI set, {folder}"
                   for folder in MRI_FOLDERS}}
GOAL_NAMES = {"mri_accepted": "brain MRI accepted", "histology_accepted": "histology accepted",
              "everyday_flagged": "everyday flagged", "test_accepted": "test split accepted"}
MODEL_NAMES = {"default": "default model (the sample)",
               "real": "model trained on the real sets (`a_original`)"}


def share_cell(row: dict, flagged: bool) -> str:
    """A source's share accepted, or flagged, with its 95% interval."""
    if flagged:
        return (f"{1 - row['accepted']:.3f} ({1 - row['accepted_high']:.3f} to "
                f"{1 - row['accepted_low']:.3f})")
    return f"{row['accepted']:.3f} ({row['accepted_low']:.3f} to {row['accepted_high']:.3f})"


def goal_cell(figure: dict, goal: float | None) -> str:
    met = ("" if goal is None else
           f"; goal {goal:.0%}: {'met' if figure['share'] >= goal else 'NOT met'}")
    return f"{figure['share']:.3f} ({figure['low']:.3f} to {figure['high']:.3f}{met})"


def goals_line(method: dict, goals: dict) -> str:
    return "; ".join(f"{GOAL_NAMES[key]} {goal_cell(figure, goals.get(key))}"
                     for key, figure in method["goals"].items())


def best_line(method: dict) -> str:
    best = method["best_point"]
    return (f"threshold {best['threshold']:.4g}: brain MRI accepted "
            f"{best['mri_accepted']:.3f}, histology {best['histology_accepted']:.3f}, "
            f"everyday flagged {best['everyday_flagged']:.3f}, test split "
            f"{best['test_accepted']:.3f}")


def ood_markdown(root: Path) -> str:
    """The pipeline's flag on each model's held-out sources, pooled as the goals read them,
    for the README (per source: docs/serving.md)."""
    benches = {which: results_file(root, name) for which, name in OOD_FILES.items()}
    lines = ["| held out: share (95% CI, n) | " + " | ".join(MODEL_NAMES[w] for w in benches)
             + " |",
             "|---|" + "---|" * len(benches)]
    for key, label in GOAL_NAMES.items():
        cells = []
        for bench in benches.values():
            figure = bench["methods"][bench["pipeline"]]["goals"][key]
            goal = bench["goals"].get(key)
            met = "" if goal is None else (
                f"; goal {goal:.0%}: {'met' if figure['share'] >= goal else 'NOT met'}")
            cells.append(f"{figure['share']:.3f} ({figure['low']:.3f}-{figure['high']:.3f}, "
                         f"n={figure['n']}{met})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", "MRI and histology held out: for the default model the "
                      "Brain Tumor MRI and breast IDC sets, for the other the sample's."])


def model_section(bench: dict) -> list[str]:
    goals = bench["goals"]
    lines = [f"**{MODEL_NAMES[bench['model']]}**: `{bench['command']}`, "
             f"{bench['wall_seconds'] / 60:.0f} minutes on {bench['machine']['cpus']} CPU "
             f"cores, model sha256 `{bench['model_sha256'][:12]}`.", ""]
    for name, method in bench["methods"].items():
        chosen = ("" if "k" not in method else f"outlier exposure chose k={method['k']}, ")
        lines += [f"- **{bench['descriptions'][name]}**: {chosen}threshold "
                  f"{method['threshold']:.4g}. Held out: {goals_line(method, goals)}. "
                  f"ROC-AUC everyday against real MRI and histology "
                  f"{method['auroc_everyday_vs_real']:.3f}. Best point (an upper bound): "
                  f"{best_line(method)}."]
    method = bench["methods"][bench["pipeline"]]
    names = list(method["sources"])
    lines += ["", "The pipeline's flag per held-out source (share accepted, or flagged, "
              "with 95% intervals):", "", "| source (n) | share (95% CI) |", "|---|---|"]
    lines += [f"| {SOURCE_NAMES[n]} ({row['n']}) | "
              f"{share_cell(row, n in ('everyday', 'other_modalities'))} |"
              for n, row in method["sources"].items()]
    lines += ["", "At every threshold (share accepted):", "",
              "| threshold | " + " | ".join(SOURCE_NAMES[n].removesuffix(" (flagged)")
                                          for n in names) + " |",
              "|---|" + "---|" * len(names)]
    lines += [f"| {point['threshold']:.4f} | "
              + " | ".join(f"{point[f'{n}_accepted']:.3f}" for n in names) + " |"
              for point in method["curve"][::2]]
    return lines


def ood_curve_markdown(root: Path) -> str:
    """Every method tried on each model: how its knob was chosen, its held-out figures and
    its best point; then the pipeline's figures per source and its threshold curve."""
    lines = []
    for name in OOD_FILES.values():
        lines += [*model_section(results_file(root, name)), ""]
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    main()
