"""Stage `evaluate`: score the best checkpoint on validation and test with intervals, check
what a trivial model scores, and write the original study's reports and figures.

Writes metrics/evaluate.json (the test split's headline figures, the best trivial
model's test accuracy and the out-of-distribution detector's figures: the DVC metric),
metrics/predictions.csv, metrics/report/ (report.json with every figure, summary.csv,
errors.csv, report.md) and plots/evaluate/ (PNG figures, dvclive plot data, Grad-CAM
overlays).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from medimg.data.images import ImageError
from medimg.data.prepared import prepare_image
from medimg.data.walk import walk_dataset
from medimg.devices import reproducible_cpu, resolve_device
from medimg.errors import run
from medimg.evaluation import plots
from medimg.evaluation.gradcam import gradcam_png
from medimg.evaluation.ood import OodDetector
from medimg.evaluation.ood_figures import ood_figures, ood_headline, reference_features
from medimg.evaluation.report import markdown, summary_table
from medimg.evaluation.scores import (
    error_analysis,
    full_metrics,
    headline,
    image_statistics,
    ood_acceptance,
    shortcut_scores,
)
from medimg.evaluation.shift import NUMERIC, ShiftReport
from medimg.evaluation.shift import headline as shift_headline
from medimg.inference import Classifier, load_classifier
from medimg.io import atomic_path, write_csv, write_json
from medimg.params import Params, load_params

PREPARED = Path("data/prepared")
MODEL_DIR = Path("models")
HISTORY = Path("metrics/train/plots/metrics")
METRICS = Path("metrics/evaluate.json")  # headline figures: the DVC metric
PREDICTIONS = Path("metrics/predictions.csv")
REPORT_DIR = Path("metrics/report")
PLOTS = Path("plots/evaluate")


def shortcut(parts: dict[str, pd.DataFrame], arrays: dict[str, np.ndarray],
             cnn_accuracy: float) -> dict:
    def features(split: str, size_only: bool) -> np.ndarray:
        size = parts[split][["width", "height"]].to_numpy(dtype=np.float64)
        return size if size_only else np.column_stack([image_statistics(arrays[split]), size])

    result = {name: shortcut_scores(features("train", size_only), parts["train"]["label"],
                                    features("test", size_only), parts["test"]["label"])
              for name, size_only in (("image_statistics", False), ("size_only", True))}
    best = max((r["accuracy"] or 0.0) for r in result.values())
    return {**result, "best_accuracy": best, "cnn_test_accuracy": cnn_accuracy,
            "trivial_model_reaches_0_99": best >= 0.99}


def external(params: Params, classifier: Classifier, detector: OodDetector | None) -> dict:
    """Score another folder-per-class dataset, decoded and resized like the training data,
    and the share of it the out-of-distribution detector accepts."""
    config = classifier.config
    folder = Path(params.evaluate.external_dir)
    walk = walk_dataset(folder, params.classes)
    pixels, labels, rejected = [], [], 0
    for candidate in walk.candidates:
        try:
            pixels.append(prepare_image(folder / candidate.path, config.image_size,
                                        config.resize))
            labels.append(params.classes.index(candidate.label_name))
        except ImageError:
            rejected += 1
    probs, features = classifier.predict_with_features(np.stack(pixels),
                                                       params.evaluate.batch_size)
    result = full_metrics(np.asarray(labels), probs, params.classes,
                          params.evaluate.bootstrap_resamples, params.seed)
    if detector is not None:
        result["ood"] = ood_acceptance({"external_dir": detector.score(features)},
                                       detector.threshold)["external_dir"]
    return {**result, "rejected": rejected, "ignored": len(walk.ignored)}


def out_of_distribution(classifier: Classifier, detector: OodDetector,
                        test_features: np.ndarray, batch_size: int) -> dict:
    """The detector on the test split and the packaged evaluation sets, and where their
    images came from."""
    references, sources = reference_features(classifier, batch_size)
    return {**ood_figures(detector, {"test": test_features, **references}), "sources": sources}


def shift_report(params: Params, parts: dict[str, pd.DataFrame],
                 arrays: dict[str, np.ndarray], features: dict[str, np.ndarray],
                 metrics: dict, predicted: np.ndarray) -> dict:
    """Where test differs from training, class by class (validation: the reference);
    writes shift.json and its figures, and returns the report."""
    classes = params.classes
    shift = ShiftReport(parts, arrays, features, Path(params.data.raw_dir),
                        params.evaluate.shift, params.seed)
    recall = {split: {name: row["recall"] for name, row in metrics[split]["per_class"].items()}
              for split in ("val", "test")}
    report = shift.report(classes, recall, predicted)
    write_json(REPORT_DIR / "shift.json", report)
    plots.shift_properties_png(PLOTS / "shift_properties.png", shift.properties, NUMERIC)
    plots.nearest_png(PLOTS / "shift_nearest_training.png", shift.nearest, shift.labels,
                      classes)
    unlike = report["most_unlike"]
    plots.contact_sheet_png(
        PLOTS / "shift_most_unlike.png", np.asarray(arrays["test"])[[r["index"] for r in unlike]],
        [f"{r['class']} -> {r['predicted']}\n{Path(r['path']).name[:28]} ({r['distance']:.1f})"
         for r in unlike])
    return report


def gradcam_overlays(classifier: Classifier, part: pd.DataFrame, pixels: np.ndarray,
                     per_class: int) -> list[str]:
    """A few test images per class and outcome, with the map of the predicted class."""
    model, config = classifier.backend.model.cpu(), classifier.config
    written = []
    for (name, correct), rows in part.groupby(["class", "correct"], sort=True):
        for index in rows.index[:per_class]:
            png = gradcam_png(model, pixels[index],
                              config.classes.index(part.at[index, "predicted"]),
                              config.mean, config.std)
            target = PLOTS / "gradcam" / (f"{name}_{'correct' if correct else 'wrong'}_"
                                          f"{Path(part.at[index, 'path']).stem}.png")
            with atomic_path(target) as tmp:
                tmp.write_bytes(png)
            written.append(target.relative_to(PLOTS).as_posix())
    return written


def main() -> None:
    params = load_params()
    settings, classes = params.evaluate, params.classes
    reproducible_cpu(params.cpu_threads)
    classifier = load_classifier(MODEL_DIR, device=resolve_device("auto"))
    config = classifier.config
    parts = {s: pd.read_csv(PREPARED / f"{s}.csv", dtype={"group": str}, keep_default_na=False)
             for s in ("train", "val", "test")}
    arrays = {s: np.load(PREPARED / f"{s}.npy", mmap_mode="r") for s in parts}
    metrics, rows = {}, []
    features = {"train": classifier.predict_with_features(arrays["train"],
                                                          settings.batch_size)[1]}
    for split in ("val", "test"):
        probs, features[split] = classifier.predict_with_features(arrays[split],
                                                                  settings.batch_size)
        labels = parts[split]["label"].to_numpy()
        metrics[split] = full_metrics(labels, probs, classes, settings.bootstrap_resamples,
                                      params.seed, settings.ece_bins)
        frame = parts[split][["path", "group", "class"]].assign(
            split=split, predicted=np.asarray(classes)[probs.argmax(axis=1)],
            true_class_probability=probs[np.arange(len(labels)), labels].round(6))
        for index, name in enumerate(classes):
            frame[f"prob_{name}"] = probs[:, index].round(6)
        rows.append(frame)
        if split == "test":
            test_labels, test_probs = labels, probs
    metrics["shortcut"] = shortcut(parts, arrays, metrics["test"]["accuracy"])
    detector = OodDetector.load(MODEL_DIR)
    if settings.external_dir:
        metrics["external"] = external(params, classifier, detector)
    if detector is not None:
        metrics["ood"] = out_of_distribution(classifier, detector, features["test"],
                                             settings.batch_size)
    predictions = pd.concat(rows, ignore_index=True)
    write_csv(PREDICTIONS, predictions)
    shift = shift_report(params, parts, arrays, features, metrics, test_probs.argmax(axis=1))

    plots.plot_data(PLOTS, test_labels, test_probs, classes)
    plots.confusion_png(PLOTS / "confusion_matrix.png", test_labels, test_probs, classes)
    plots.curves_png(PLOTS, test_labels, test_probs, classes)
    plots.score_histogram(PLOTS, test_labels, test_probs, classes)
    plots.training_history_png(PLOTS / "training_history.png", HISTORY)
    test = predictions[predictions["split"] == "test"].reset_index(drop=True)
    test["correct"] = test["class"] == test["predicted"]
    overlays = gradcam_overlays(classifier, test, np.asarray(arrays["test"]),
                                settings.gradcam_per_class)

    report = {"config": params.model_dump(), "model": config.model_dump(include={
                  "model", "image_size", "resize", "pretrained", "best_epoch", "monitor",
                  "best_value"}),
              "data": {s: len(p) for s, p in parts.items()}, "metrics": metrics}
    summary = summary_table(metrics)
    write_json(REPORT_DIR / "report.json", report)
    write_json(METRICS, {**headline(metrics["test"]),
                         "shortcut": round(metrics["shortcut"]["best_accuracy"], 4),
                         **(ood_headline(metrics["ood"]) if "ood" in metrics else {}),
                         **shift_headline(shift)})
    write_csv(REPORT_DIR / "summary.csv", summary)
    write_csv(REPORT_DIR / "errors.csv", error_analysis(predictions, settings.least_confident))
    figures = sorted(p.relative_to(PLOTS).as_posix() for p in PLOTS.glob("*.png")) + overlays
    with atomic_path(REPORT_DIR / "report.md") as tmp:
        tmp.write_text(markdown(report, summary, figures, "../../plots/evaluate"))
    test_metrics = metrics["test"]
    print(f"evaluate: test n {test_metrics['n']}, accuracy {test_metrics['accuracy']:.4f} "
          f"[{test_metrics['accuracy_low']:.4f}, {test_metrics['accuracy_high']:.4f}], "
          f"shortcut {metrics['shortcut']['image_statistics']['accuracy']}")


if __name__ == "__main__":
    run(main)
