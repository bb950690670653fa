"""The classification metrics every other module uses: accuracy, macro F1 and ROC-AUC,
each defined once here (validation during training, evaluation with intervals, the
README's leakage study)."""

import numpy as np
from sklearn.metrics import roc_auc_score


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float((np.asarray(labels) == np.asarray(predicted)).mean())


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int | None = None) -> float:
    """Macro F1 of predicted labels, as scikit-learn's `f1_score(average="macro",
    zero_division=0)`: over `range(num_classes)` when given (a class neither present nor
    predicted scores 0), else over the classes seen in either array. Counting with
    bincount keeps it fast enough for thousands of bootstrap resamples."""
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    size = num_classes or int(max(labels.max(initial=0), predicted.max(initial=0)) + 1)
    hits = np.bincount(labels[labels == predicted], minlength=size)
    totals = np.bincount(labels, minlength=size) + np.bincount(predicted, minlength=size)
    if num_classes is None:
        hits, totals = hits[totals > 0], totals[totals > 0]
    scores = np.divide(2.0 * hits, totals, out=np.zeros(len(totals)), where=totals > 0)
    return float(scores.mean())


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC-AUC from an N x C probability matrix (one-vs-rest for more than two classes);
    None when only one class is present, where it is undefined."""
    if len(np.unique(labels)) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr",
                               labels=np.arange(probs.shape[1])))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | int | None]:
    """Accuracy, macro F1 and ROC-AUC from true labels and an N x C probability matrix."""
    predicted = probs.argmax(axis=1)
    return {"n": len(labels), "accuracy": accuracy(labels, predicted),
            "f1_macro": macro_f1(labels, predicted, probs.shape[1]),
            "roc_auc": roc_auc(labels, probs)}
