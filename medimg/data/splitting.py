"""Group-aware, stratified splits, k-fold, and the check that nothing leaks across them."""

import numpy as np
import pandas as pd

from medimg.data.perceptual import correlation, detail_correlation, near_pairs, phash_values
from medimg.errors import SplitError

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
# Catalog columns no value of which may be in two splits ("" is no value).
LEAK_KEYS = ("group", "patient", "series", "sha256", "pixel_sha256")


def allocate_groups(labels: np.ndarray, groups: np.ndarray, shares: dict[str, float],
                    seed: int) -> np.ndarray:
    """Assign whole groups to named parts so each part's per-class counts approach
    share x class total.

    Groups go largest first (ties in a seeded random order) to the part where they reduce
    the chi-square distance between assigned and wanted counts the most, so a large group
    lands where it overshoots least.
    """
    names = [name for name, share in shares.items() if share > 0]
    class_ids, label_index = np.unique(labels, return_inverse=True)
    group_ids, group_index = np.unique(groups, return_inverse=True)
    counts = np.zeros((len(group_ids), len(class_ids)))
    np.add.at(counts, (group_index, label_index), 1)
    wanted = np.outer([shares[name] for name in names], counts.sum(axis=0))
    need = wanted.copy()
    scale = np.maximum(wanted, 1.0)
    order = np.random.default_rng(seed).permutation(len(group_ids))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    part = np.empty(len(group_ids), dtype=np.int64)
    for group in order:
        x = counts[group]
        change = ((x * x - 2.0 * x * need) / scale).sum(axis=1)
        part[group] = int(np.argmin(change))
        need[part[group]] -= x
    return np.asarray(names, dtype=object)[part[group_index]]


def assign_splits(table: pd.DataFrame, val: float, test: float, seed: int, folds: int = 0,
                  fold: int = 0, respect_existing: str | None = None) -> np.ndarray:
    """Split name per catalog row; every group lands in exactly one split.

    With `respect_existing`, the rows of that origin folder are the test set and rows of
    other origins that share a group with them are excluded. With `folds` > 0 the
    non-test data is cut into that many folds and fold number `fold` is validation.
    """
    labels, groups = table["label"].to_numpy(), table["group"].to_numpy()
    split = np.full(len(table), "train", dtype=object)
    if respect_existing is not None:
        in_test = (table["origin"] == respect_existing).to_numpy()
        if not in_test.any():
            raise SplitError(f"split.respect_existing: no image has origin '{respect_existing}'")
        split[in_test] = "test"
        split[~in_test & np.isin(groups, groups[in_test])] = EXCLUDED
    elif test > 0:
        split = allocate_groups(labels, groups, {"test": test, "train": 1.0 - test}, seed)
    rest = np.flatnonzero(split == "train")
    if folds > 0:
        parts = allocate_groups(labels[rest], groups[rest],
                                {f"fold{i}": 1.0 / folds for i in range(folds)}, seed)
        split[rest[parts == f"fold{fold}"]] = "val"
    elif val > 0:
        val_share = val * len(table) / len(rest)  # val is a share of all images
        parts = allocate_groups(labels[rest], groups[rest],
                                {"val": val_share, "train": 1.0 - val_share}, seed)
        split[rest[parts == "val"]] = "val"
    return split


def check_class_counts(table: pd.DataFrame, classes: list[str], min_per_split: int) -> None:
    """Stop unless every class has `min_per_split` images in each of train, val and test:
    a class absent from test would still score a perfect accuracy on the others."""
    for name in classes:
        rows = table[table["class"] == name]
        counts = rows["split"].value_counts()
        if min(int(counts.get(split, 0)) for split in SPLITS) < min_per_split:
            found = ", ".join(f"{split} {int(counts.get(split, 0))}" for split in SPLITS)
            raise SplitError(
                f"split: class '{name}' has {len(rows)} images in {rows['group'].nunique()} "
                f"groups, split as {found}; every class needs at least {min_per_split} in "
                f"each (split.min_per_split), in whole groups")


def _cross_split(split: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    used = (split[first] != EXCLUDED) & (split[second] != EXCLUDED)
    return used & (split[first] != split[second])


def leakage(table: pd.DataFrame, thumbs: np.ndarray, near_hamming: int,
            near_correlation: float) -> tuple[dict[str, int], pd.DataFrame]:
    """Counts of what is shared across splits, and the offending pairs, which must be none:
    group ids, patients and series (from the headers, whatever grouping was used), file
    hashes, pixel hashes, and confirmed near duplicates."""
    split = table["split"].to_numpy()
    used = table[table["split"] != EXCLUDED]
    offenders = []
    for key in LEAK_KEYS:
        if key not in used:
            continue
        spread = used[used[key] != ""].groupby(key)["split"].nunique()
        for value in spread.index[spread > 1]:
            rows = used[used[key] == value]
            offenders.append({"kind": key, "a": rows["path"].iat[0], "b": rows["path"].iat[-1],
                              "detail": f"{key} {value} in {sorted(set(rows['split']))}"})
    hashes = phash_values(table["phash"])
    first, second = near_pairs(hashes, near_hamming)
    crossing = _cross_split(split, first, second)
    for i, j in zip(first[crossing].tolist(), second[crossing].tolist(), strict=True):
        score = detail_correlation(thumbs[i], thumbs[j])
        if score >= near_correlation:
            offenders.append({"kind": "near_duplicate", "a": table["path"].iat[i],
                              "b": table["path"].iat[j], "detail": f"correlation {score:.4f}"})
    found = pd.DataFrame(offenders, columns=["kind", "a", "b", "detail"])
    counts = found["kind"].value_counts()
    overlap = {kind: int(counts.get(kind, 0)) for kind in (*LEAK_KEYS, "near_duplicate")}
    return overlap, found


def closest_pairs(table: pd.DataFrame, thumbs: np.ndarray, count: int,
                  max_distance: int = 12) -> pd.DataFrame:
    """The `count` most similar cross-split pairs by pHash distance: what a reviewer should
    look at to judge the leakage that remains."""
    hashes = phash_values(table["phash"])
    split = table["split"].to_numpy()
    for radius in range(4, max_distance + 1, 4):
        first, second = near_pairs(hashes, radius)
        crossing = _cross_split(split, first, second)
        if crossing.sum() >= count or radius >= max_distance:
            break
    distance = np.bitwise_count(hashes[first] ^ hashes[second]).astype(int)[crossing]
    nearest = np.argsort(distance, kind="stable")[:count * 5]  # correlations only for these
    first, second = first[crossing][nearest], second[crossing][nearest]
    pairs = pd.DataFrame({
        "a": table["path"].to_numpy()[first], "split_a": split[first],
        "b": table["path"].to_numpy()[second], "split_b": split[second],
        "phash_distance": distance[nearest],
        "correlation": [round(correlation(thumbs[i], thumbs[j]), 4)
                        for i, j in zip(first, second, strict=True)],
        "detail_correlation": [round(detail_correlation(thumbs[i], thumbs[j]), 4)
                               for i, j in zip(first, second, strict=True)],
    })
    ranked = pairs.sort_values(["phash_distance", "detail_correlation", "a", "b"],
                               ascending=[True, False, True, True])
    return ranked.head(count).reset_index(drop=True)
