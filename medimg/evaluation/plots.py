"""Evaluation figures, as PNG for people and as plot data for `dvc plots`."""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from dvclive import Live
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)

from medimg.io import atomic_path, write_csv


def save_figure(path: Path, figure: plt.Figure) -> None:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_data(folder: Path, labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """dvclive's sklearn plot files: confusion matrices, ROC, PR and calibration."""
    names = np.asarray(classes)
    with Live(str(folder), dvcyaml=False, save_dvc_exp=False) as live:
        live.log_sklearn_plot("confusion_matrix", names[labels], names[probs.argmax(1)])
        live.log_sklearn_plot("confusion_matrix", names[labels], names[probs.argmax(1)],
                              name="confusion_matrix_normalized", normalized=True)
        if len(classes) == 2 and len(np.unique(labels)) == 2:
            live.log_sklearn_plot("roc", labels, probs[:, 1])
            live.log_sklearn_plot("precision_recall", labels, probs[:, 1])
            live.log_sklearn_plot("calibration", labels, probs[:, 1])


def confusion_figure(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> plt.Figure:
    """Counts and row-normalised confusion matrices side by side. Long class names wrap
    and the column names slant, so that neighbouring names never overlap."""
    names = np.asarray([textwrap.fill(name, 16) for name in classes])
    longest = max(len(name) for name in classes)
    size = 3 + 0.8 * len(classes) + 0.06 * min(longest, 16)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for axis, normalize, title in ((axes[0], None, "counts"), (axes[1], "true", "normalised")):
        ConfusionMatrixDisplay.from_predictions(names[labels], names[probs.argmax(1)],
                                                labels=names, normalize=normalize, ax=axis,
                                                colorbar=False)
        plt.setp(axis.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
        axis.set_title(f"Test confusion matrix ({title})")
    figure.tight_layout()
    return figure


def confusion_png(path: Path, labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    save_figure(path, confusion_figure(labels, probs, classes))


def curves_png(folder: Path, labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """ROC, precision-recall and reliability curves (two classes)."""
    if len(classes) != 2 or len(np.unique(labels)) < 2:
        return
    positive = probs[:, 1]
    for name, draw in (("roc", RocCurveDisplay.from_predictions),
                       ("precision_recall", PrecisionRecallDisplay.from_predictions)):
        figure, axis = plt.subplots(figsize=(4, 4))
        draw(labels, positive, ax=axis, name=classes[1])
        axis.set_title(f"Test {name.replace('_', '-')}")
        save_figure(folder / f"{name}.png", figure)
    observed, predicted = calibration_curve(labels, positive, n_bins=10, strategy="uniform")
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect")
    axis.plot(predicted, observed, marker="o", label=classes[1])
    axis.set(xlabel="predicted probability", ylabel="observed share", title="Test calibration")
    axis.legend()
    save_figure(folder / "calibration.png", figure)


def score_histogram(folder: Path, labels: np.ndarray, probs: np.ndarray,
                    classes: list[str]) -> None:
    """Histogram of the probability of the last class, per true class (PNG and CSV)."""
    edges = np.linspace(0, 1, 21)
    score = probs[:, -1]
    rows = []
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for index, name in enumerate(classes):
        counts, _ = np.histogram(score[labels == index], bins=edges)
        axis.hist(score[labels == index], bins=edges, alpha=0.6, label=name)
        rows += [{"score": round(float(c), 3), "class": name, "count": int(n)}
                 for c, n in zip((edges[:-1] + edges[1:]) / 2, counts, strict=True)]
    axis.set(xlabel=f"probability of {classes[-1]}", ylabel="test images",
             title="Test scores per true class")
    axis.legend()
    save_figure(folder / "score_histogram.png", figure)
    write_csv(folder / "score_histogram.csv", pd.DataFrame(rows))


def training_history_png(path: Path, history_dir: Path) -> None:
    """Loss and validation F1 per epoch from dvclive's files."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, axis in (("loss", axes[0]), ("f1_macro", axes[1])):
        for split in ("train", "val"):
            tsv = history_dir / split / f"{name}.tsv"
            if tsv.is_file():
                frame = pd.read_csv(tsv, sep="\t")
                axis.plot(frame["step"], frame[name], marker="o", label=split)
        axis.set(xlabel="epoch", ylabel=name, title=f"Training history: {name}")
        axis.legend()
    save_figure(path, figure)


SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:green", "test": "tab:red"}


def shift_properties_png(path: Path, properties: dict[str, pd.DataFrame],
                         names: tuple[str, ...]) -> None:
    """Each numeric image property's distribution in each split, as overlaid histograms."""
    columns = 3
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows))
    for axis, name in zip(axes.flat, names, strict=False):
        values = {split: found[name].dropna().to_numpy(dtype=float)
                  for split, found in properties.items()}
        every = np.concatenate(list(values.values()))
        if not len(every):
            axis.set_title(f"{name}: none")
            continue
        edges = np.histogram_bin_edges(every, bins=20)
        for split, data in values.items():
            axis.hist(data, bins=edges, density=True, histtype="step", linewidth=1.5,
                      color=SPLIT_COLOURS[split], label=split)
        axis.set_title(name)
    for axis in list(axes.flat)[len(names):]:
        axis.set_visible(False)
    axes.flat[0].legend()
    save_figure(path, figure)


def nearest_png(path: Path, distances: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                classes: list[str]) -> None:
    """Distance to the nearest training image of the own class, per class and split."""
    figure, axis = plt.subplots(figsize=(max(5, 2.2 * len(classes)), 3.5))
    data, positions, colours = [], [], []
    for index in range(len(classes)):
        for offset, split in ((-0.2, "val"), (0.2, "test")):
            values = distances[split][labels[split] == index]
            data.append(values[~np.isnan(values)])
            positions.append(index + offset)
            colours.append(SPLIT_COLOURS[split])
    boxes = axis.boxplot(data, positions=positions, widths=0.35, patch_artist=True)
    for box, colour in zip(boxes["boxes"], colours, strict=True):
        box.set_facecolor(colour)
        box.set_alpha(0.5)
    axis.set_xticks(range(len(classes)), classes)
    axis.set_ylabel("distance to nearest training image")
    axis.set_title("Validation (green) and test (red) against training, by class")
    save_figure(path, figure)


def contact_sheet_png(path: Path, images: np.ndarray, captions: list[str],
                      columns: int = 4) -> None:
    """Images in a grid, each with its caption."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows))
    for axis in np.atleast_1d(axes).flat:
        axis.axis("off")
    for axis, image, caption in zip(np.atleast_1d(axes).flat, images, captions, strict=False):
        axis.imshow(image)
        axis.set_title(caption, fontsize=8)
    save_figure(path, figure)
