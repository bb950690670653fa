"""Classification metrics shared by training (validation) and evaluation."""

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | int | None]:
    """Accuracy, macro F1 and ROC-AUC from true labels and an N x C probability matrix."""
    predicted = probs.argmax(axis=1)
    result: dict[str, float | int | None] = {
        "n": len(labels),
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro",
                                   labels=np.arange(probs.shape[1]), zero_division=0)),
    }
    # AUC is undefined when only one class is present: report it as missing (JSON null).
    if len(np.unique(labels)) < 2:
        result["roc_auc"] = None
    elif probs.shape[1] == 2:
        result["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    else:
        result["roc_auc"] = float(roc_auc_score(labels, probs, multi_class="ovr",
                                                labels=np.arange(probs.shape[1])))
    return result
