"""Stage `evaluate`: score the best checkpoint on the validation and test splits.

Writes metrics/evaluate.json, a per-image predictions table, the confusion matrix, ROC and
precision-recall curves as DVC plot data (dvclive) and as PNG images.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from dvclive import Live
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay
from torch.utils.data import DataLoader

from medimg.data import ArrayDataset, eval_transform
from medimg.devices import resolve_device
from medimg.io import atomic_path, write_csv, write_json
from medimg.metrics import classification_metrics
from medimg.models import load_checkpoint, probabilities
from medimg.params import load_params
from medimg.training import predict_logits

PREPARED = Path("data/prepared")
MODEL_DIR = Path("models")
METRICS = Path("metrics/evaluate.json")
PREDICTIONS = Path("metrics/predictions.csv")
PLOTS = Path("plots/evaluate")


def predict_split(model: torch.nn.Module, config: dict, part: pd.DataFrame, split: str,
                  batch_size: int) -> np.ndarray:
    transform = eval_transform(config["mean"], config["std"])
    dataset = ArrayDataset(PREPARED / f"{split}.npy", part["label"], transform)
    device = resolve_device("auto")
    _, logits = predict_logits(model.to(device), DataLoader(dataset, batch_size=batch_size),
                               device)
    return probabilities(logits).double().numpy()


def save_figure(path: Path, figure: plt.Figure) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_test(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    names = np.asarray(classes)
    with Live(str(PLOTS), dvcyaml=False, save_dvc_exp=False) as live:
        live.log_sklearn_plot("confusion_matrix", names[labels], names[probs.argmax(1)])
        if len(classes) == 2 and len(np.unique(labels)) == 2:
            live.log_sklearn_plot("roc", labels, probs[:, 1])
            live.log_sklearn_plot("precision_recall", labels, probs[:, 1])
    figure, axis = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay.from_predictions(names[labels], names[probs.argmax(1)],
                                            labels=names, ax=axis, colorbar=False)
    axis.set_title("Test confusion matrix")
    save_figure(PLOTS / "confusion_matrix.png", figure)
    if len(classes) == 2 and len(np.unique(labels)) == 2:
        figure, axis = plt.subplots(figsize=(4, 4))
        RocCurveDisplay.from_predictions(labels, probs[:, 1], ax=axis, name=classes[1])
        axis.set_title("Test ROC")
        save_figure(PLOTS / "roc.png", figure)


def main() -> None:
    params = load_params()
    model, config = load_checkpoint(MODEL_DIR)
    report, rows = {}, []
    for split in ("val", "test"):
        part = pd.read_csv(PREPARED / f"{split}.csv", dtype={"group": str})
        probs = predict_split(model, config, part, split, params.evaluate.batch_size)
        labels = part["label"].to_numpy()
        report[split] = classification_metrics(labels, probs)
        predicted = probs.argmax(axis=1)
        frame = part[["path", "group", "class"]].assign(
            split=split, predicted=[params.classes[i] for i in predicted])
        for index, name in enumerate(params.classes):
            frame[f"prob_{name}"] = probs[:, index].round(6)
        rows.append(frame)
        if split == "test":
            plot_test(labels, probs, params.classes)
    write_json(METRICS, report)
    write_csv(PREDICTIONS, pd.concat(rows, ignore_index=True))
    print("evaluate: " + ", ".join(f"{key} {value}" for key, value in report["test"].items()))


if __name__ == "__main__":
    main()
