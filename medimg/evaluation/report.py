"""The evaluation's deliverables: final report JSON, metrics summary CSV, markdown report."""

from pathlib import Path

import pandas as pd

SUMMARY_KEYS = ("n", "errors", "accuracy", "balanced_accuracy", "precision_macro",
                "recall_macro", "f1_macro", "f1_weighted", "sensitivity", "specificity",
                "roc_auc", "average_precision", "mcc", "brier", "log_loss", "ece")


def summary_table(metrics: dict) -> pd.DataFrame:
    """One row per split and metric, with its interval where it has one."""
    rows = []
    for split, values in metrics.items():
        if not isinstance(values, dict) or "n" not in values:
            continue
        for key in SUMMARY_KEYS:
            if key in values:
                rows.append({"split": split, "metric": key, "value": values[key],
                             "ci95_low": values.get(f"{key}_low"),
                             "ci95_high": values.get(f"{key}_high")})
    return pd.DataFrame(rows)


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def shortcut_sentence(shortcut: dict) -> str:
    stats, size = shortcut["image_statistics"], shortcut["size_only"]
    text = (f"A logistic regression on per-image colour statistics and size scores test "
            f"accuracy {_cell(stats['accuracy'])}; on width and height alone "
            f"{_cell(size['accuracy'])}.")
    if shortcut["trivial_model_reaches_0_99"]:
        text += (" A trivial model reaches at least 0.99: the task is separable without "
                 "looking at anatomy or tissue, so a high CNN score says little.")
    return text


def markdown(report: dict, summary: pd.DataFrame, plots: list[str], plots_prefix: str) -> str:
    lines = ["# Evaluation report", "",
             f"Model `{report['model']['model']}` at {report['model']['image_size']} px, best "
             f"epoch {report['model']['best_epoch']} ({report['model']['monitor']} "
             f"{_cell(report['model']['best_value'])}). Data: "
             + ", ".join(f"{k} {v}" for k, v in report["data"].items()) + ".", "",
             "| split | metric | value | 95% interval |", "|---|---|---|---|"]
    for row in summary.itertuples():
        interval = ("" if pd.isna(row.ci95_low) else
                    f"{_cell(float(row.ci95_low))} to {_cell(float(row.ci95_high))}")
        if pd.isna(row.value):
            value = None
        elif row.metric in ("n", "errors"):
            value = int(row.value)
        else:
            value = float(row.value)
        lines.append(f"| {row.split} | {row.metric} | {_cell(value)} | {interval} |")
    lines += ["", "## Shortcut check", "", shortcut_sentence(report["metrics"]["shortcut"]), "",
              "## Figures", ""]
    lines += [f"![{Path(name).stem}]({plots_prefix}/{name})" for name in plots]
    return "\n".join(lines) + "\n"
