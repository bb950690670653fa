"""Group-aware, stratified train/val/test assignment."""

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")


def _holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a held-out part of about `fraction`, whole groups only, stratified."""
    n_splits = max(2, round(1.0 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} groups cannot be split into parts of {fraction:.0%}")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    target = np.bincount(labels, minlength=labels.max() + 1) * fraction

    def error(held: np.ndarray) -> float:
        # Distance of the fold's per-class counts from the wanted counts, relative.
        counts = np.bincount(labels[held], minlength=len(target))
        return float(np.abs(counts - target).sum() / target.sum())

    # With few, large groups the folds differ a lot: take the one closest to the target.
    held = min((test for _, test in folds.split(np.zeros(len(labels)), labels, groups)),
               key=error)
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def assign_splits(labels: np.ndarray, groups: np.ndarray, val: float, test: float,
                  seed: int) -> np.ndarray:
    """Split name per image; every group lands in exactly one split."""
    split = np.full(len(labels), "train", dtype=object)
    if test > 0:
        split[_holdout(labels, groups, test, seed)] = "test"
    rest = np.flatnonzero(split == "train")
    if val > 0:
        # val is a share of everything, so it is a larger share of what test left over.
        held = _holdout(labels[rest], groups[rest], val / (1.0 - test), seed)
        split[rest[held]] = "val"
    return split
