"""Metrics with 95% intervals, error analysis and the shortcut baseline.

Every proportion gets a Wilson interval (so 0 errors in n still has a lower bound below
100%), and AUC and F1 a stratified bootstrap interval.
"""

import math
from collections.abc import Callable, Iterator
from itertools import islice

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    log_loss,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medimg.evaluation.metrics import accuracy, macro_f1, roc_auc

Z95 = 1.959963984540054
# The test figures a reader compares across experiments (`dvc exp show`), under short
# names so that `dvc metrics show` fits a 200-column screen; each with its 95% interval
# (_lo, _hi) where it has one. Every other figure is in metrics/report/report.json.
HEADLINE = {"acc": "accuracy", "bal_acc": "balanced_accuracy", "f1": "f1_macro",
            "auc": "roc_auc", "ece": "ece"}
LOW, HIGH = "_lo", "_hi"  # a headline figure's interval ends
INTERVAL = {"": "", LOW: "_low", HIGH: "_high"}  # headline suffix: full-name suffix


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if total == 0:
        return (0.0, 1.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    # At the ends the bound is exactly 0 or 1; rounding must not report 0.9999999.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return (low, high)


def stratified_resamples(labels: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless bootstrap resamples of the positions of `labels`, drawn with replacement
    within each true class, so every resample keeps the class counts."""
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    while True:
        yield np.concatenate([rng.choice(m, size=len(m)) for m in members])


def percentile_interval(values: list[float]) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


def bootstrap_interval(labels: np.ndarray, probs: np.ndarray,
                       metric: Callable[[np.ndarray, np.ndarray], float], resamples: int,
                       seed: int) -> tuple[float, float] | None:
    """Percentile interval of `metric` over stratified resamples (None when the metric is
    undefined on every one)."""
    values = []
    for index in islice(stratified_resamples(labels, np.random.default_rng(seed)), resamples):
        try:
            values.append(metric(labels[index], probs[index]))
        except ValueError:  # a metric undefined on this resample
            continue
    return percentile_interval(values) if values else None


def difference_interval(first: tuple[np.ndarray, np.ndarray],
                        second: tuple[np.ndarray, np.ndarray],
                        metric: Callable[[np.ndarray, np.ndarray], float], resamples: int,
                        seed: int) -> tuple[float, tuple[float, float]]:
    """metric(second) - metric(first) for two independent test sets, each given as
    (labels, predicted labels), and its 95% percentile interval from resampling both
    sets within each true class."""
    rng = np.random.default_rng(seed)
    draws = [stratified_resamples(labels, rng) for labels, _ in (first, second)]

    def resampled(which: int) -> float:
        labels, predicted = (first, second)[which]
        index = next(draws[which])
        return metric(labels[index], predicted[index])

    values = [resampled(1) - resampled(0) for _ in range(resamples)]
    return metric(*second) - metric(*first), percentile_interval(values)


def paired_difference_interval(labels: np.ndarray, first: np.ndarray, second: np.ndarray,
                               metric: Callable[[np.ndarray, np.ndarray], float],
                               resamples: int, seed: int) -> tuple[float, tuple[float, float]]:
    """metric(second) - metric(first) for two models' predicted labels on the same images,
    and its 95% percentile interval from resampling the images within each true class,
    the same images for both models: pairing removes the variation they share."""
    draws = stratified_resamples(labels, np.random.default_rng(seed))
    values = [metric(labels[index], second[index]) - metric(labels[index], first[index])
              for index in islice(draws, resamples)]
    return metric(labels, second) - metric(labels, first), percentile_interval(values)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(gap)


def _macro_f1(labels: np.ndarray, probs: np.ndarray) -> float:
    return macro_f1(labels, probs.argmax(axis=1), probs.shape[1])


def with_interval(result: dict, name: str, value: float | None,
                  interval: tuple[float, float] | None) -> None:
    result[name] = value
    result[f"{name}_low"] = None if interval is None else round(interval[0], 6)
    result[f"{name}_high"] = None if interval is None else round(interval[1], 6)


def full_metrics(labels: np.ndarray, probs: np.ndarray, classes: list[str], resamples: int,
                 seed: int, ece_bins: int = 10) -> dict:
    """Every figure of the original study for one split, with 95% intervals."""
    predicted = probs.argmax(axis=1)
    n, correct = len(labels), int((predicted == labels).sum())
    every = np.arange(len(classes))
    two_sided = len(np.unique(labels)) > 1
    result: dict = {"n": n, "errors": n - correct}
    with_interval(result, "accuracy", correct / n if n else None, wilson_interval(correct, n))
    result["balanced_accuracy"] = float(balanced_accuracy_score(labels, predicted))
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, labels=every, average=average, zero_division=0)
        result[f"precision_{average}"] = float(precision)
        result[f"recall_{average}"] = float(recall)
        if average == "macro":
            with_interval(result, "f1_macro", _macro_f1(labels, probs),
                          bootstrap_interval(labels, probs, _macro_f1, resamples, seed))
        else:
            result["f1_weighted"] = float(f1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=every, zero_division=0)
    result["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                  "f1": float(f1[i]), "support": int(support[i])}
                           for i, name in enumerate(classes)}
    if len(classes) == 2:
        positive, negative = labels == 1, labels == 0
        hits = int((predicted[positive] == 1).sum())
        rejections = int((predicted[negative] == 0).sum())
        with_interval(result, "sensitivity", hits / max(positive.sum(), 1),
                      wilson_interval(hits, int(positive.sum())))
        with_interval(result, "specificity", rejections / max(negative.sum(), 1),
                      wilson_interval(rejections, int(negative.sum())))
    if two_sided:
        with_interval(result, "roc_auc", roc_auc(labels, probs),
                      bootstrap_interval(labels, probs, roc_auc, resamples, seed))
        if len(classes) == 2:
            result["average_precision"] = float(average_precision_score(labels, probs[:, 1]))
        else:
            onehot = np.eye(len(classes))[labels]
            result["average_precision"] = float(average_precision_score(onehot, probs))
    else:
        with_interval(result, "roc_auc", None, None)
        result["average_precision"] = None
    result["mcc"] = float(matthews_corrcoef(labels, predicted))
    onehot = np.eye(len(classes))[labels]
    result["brier"] = (float(brier_score_loss(labels, probs[:, 1])) if len(classes) == 2
                       else float(((probs - onehot) ** 2).sum(axis=1).mean()))
    result["log_loss"] = float(log_loss(labels, np.clip(probs, 1e-15, 1.0), labels=every))
    result["ece"] = expected_calibration_error(labels, probs, ece_bins)
    return result


def headline(metrics: dict) -> dict[str, float | None]:
    """The HEADLINE figures of one split's `full_metrics`, rounded to 4 decimals."""
    result: dict[str, float | None] = {}
    for short, name in HEADLINE.items():
        for short_suffix, suffix in INTERVAL.items():
            if f"{name}{suffix}" in metrics:
                value = metrics[f"{name}{suffix}"]
                result[short + short_suffix] = None if value is None else round(value, 4)
    return result


def error_analysis(predictions: pd.DataFrame, least_confident: int) -> pd.DataFrame:
    """Every misclassified image, then the `least_confident` correct ones with the lowest
    probability for their true class."""
    wrong = predictions[predictions["class"] != predictions["predicted"]]
    right = predictions[predictions["class"] == predictions["predicted"]]
    return pd.concat([
        wrong.assign(kind="error").sort_values("true_class_probability"),
        right.nsmallest(least_confident, "true_class_probability").assign(kind="least_confident"),
    ], ignore_index=True)


def image_statistics(pixels: np.ndarray) -> np.ndarray:
    """Per-image mean and standard deviation per channel and mean saturation (N x 7)."""
    values = pixels.reshape(len(pixels), -1, 3).astype(np.float32) / 255.0
    brightest, darkest = values.max(axis=2), values.min(axis=2)
    saturation = np.where(brightest > 0, (brightest - darkest) / np.maximum(brightest, 1e-6), 0)
    return np.column_stack([values.mean(axis=1), values.std(axis=1), saturation.mean(axis=1)])


def shortcut_scores(train_features: np.ndarray, train_labels: np.ndarray,
                    test_features: np.ndarray, test_labels: np.ndarray) -> dict[str, float]:
    """A logistic regression on a few numbers per image: what a trivial model scores."""
    if len(np.unique(train_labels)) < 2:
        return {"accuracy": None, "f1_macro": None}
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(train_features, train_labels)
    predicted = model.predict(test_features)
    return {"accuracy": accuracy(test_labels, predicted),
            "f1_macro": macro_f1(test_labels, predicted)}


def ood_acceptance(scores: dict[str, np.ndarray], threshold: float) -> dict[str, dict]:
    """For each named set of out-of-distribution scores: its size and the share accepted
    as in-distribution (score <= threshold), with a Wilson 95% interval."""
    result = {}
    for name, values in scores.items():
        accepted, n = int((values <= threshold).sum()), len(values)
        low, high = wilson_interval(accepted, n)
        result[name] = {"n": n, "accepted": accepted / n if n else None,
                        "accepted_low": round(low, 6), "accepted_high": round(high, 6)}
    return result


def ood_auroc(inside: np.ndarray, outside: np.ndarray) -> float | None:
    """How well the scores rank out-of-distribution images above in-distribution ones."""
    if not len(inside) or not len(outside):
        return None
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(labels, np.r_[inside, outside]))


def acceptance_curve(scores: dict[str, np.ndarray], points: int) -> list[dict]:
    """The share of each set accepted at `points` thresholds spread over all the scores
    (their quantiles): the trade-off between accepting in-distribution sets and flagging
    the others, whatever threshold one picks."""
    every = np.concatenate(list(scores.values()))
    thresholds = np.unique(np.quantile(every, np.linspace(0.0, 1.0, points)))
    return [{"threshold": round(float(threshold), 4),
             **{f"{name}_accepted": round(float((values <= threshold).mean()), 4)
                for name, values in scores.items()}}
            for threshold in thresholds]
