"""The README's headline figures, rendered from the DVC metrics files the dedup, split,
train and evaluate stages write (metrics/*.json, which git holds). No stage imports this."""

from pathlib import Path

from medimg.docs import fmt, results_file
from medimg.params import load_params


def headline_markdown(root: Path) -> str:
    """The default run's headline figures: the DVC metrics files, which git holds."""
    dedup, split, train, test = (results_file(root, f"{n}.json", "metrics")
                                 for n in ("dedup", "split", "train", "evaluate"))
    params = load_params(root / "params.yaml")
    monitor, shares = params.train.monitor, params.split

    def cell(name: str) -> str:
        value, low, high = test[name], test.get(f"{name}_lo"), test.get(f"{name}_hi")
        return fmt(value) if low is None else f"{fmt(value)} ({fmt(low)} to {fmt(high)})"

    lines = [
        f"Data: {dedup['found']} images found, {dedup['kept']} kept after de-duplication; "
        f"split by group {100 * (1 - shares.val - shares.test):.0f}/{100 * shares.val:.0f}/"
        f"{100 * shares.test:.0f}%, patients in two splits: "
        f"{split['patients_across_splits']}. "
        f"Best epoch {train['best_epoch']} ({monitor} {fmt(train['best'])}).", "",
        "| test split | value (95% CI) |", "|---|---|",
        f"| accuracy | {cell('acc')} |", f"| balanced accuracy | {cell('bal_acc')} |",
        f"| macro F1 | {cell('f1')} |", f"| ROC-AUC | {cell('auc')} |",
        f"| expected calibration error | {cell('ece')} |",
        f"| accuracy of the best trivial model (logistic regression on colour statistics "
        f"and size, or size alone) | {fmt(test['shortcut'])} |"]
    if test["shortcut"] >= 0.99:
        lines += ["", "A trivial model reaches at least 0.99 test accuracy: this task is "
                  "separable without looking at anatomy or tissue."]
    return "\n".join(lines)


def shift_markdown(root: Path) -> str:
    """The default run's shift figure, from metrics/evaluate.json."""
    test = results_file(root, "evaluate.json", "metrics")
    return (f"On the default sample (`metrics/evaluate.json`), the domain classifier tells "
            f"training from test images with ROC-AUC {fmt(test['shift_auc'])} (its interval, "
            "the validation reference and each class: `metrics/report/shift.json`). The split "
            "keeps slabs of neighbouring slices and regions of a slide together, so test "
            "images come from other parts of the same few sources than the training images.")
