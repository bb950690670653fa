"""Where the test split differs from the training split, overall and per class: a shift
report, with the validation split as the no-shift reference.

- Image properties (size, aspect, format, JPEG quality, grey or colour, intensity mean and
  spread, sharpness, background share): for each, a drift statistic between training and
  the other split (Kolmogorov-Smirnov's D for numbers, total variation for categories)
  with a permutation p-value.
- A domain classifier: a logistic regression tells training images from the other
  split's, on the network's stage features and, separately, on the properties; grouped,
  stratified cross-validation gives out-of-fold scores, and their ROC-AUC gets a bootstrap
  95% interval. 0.5 is "indistinguishable", the expected answer for a random split.
- Distance from each image to the nearest training image of its own class (standardised
  features), and class proportions.
- Each class's shift beside its drop from validation recall to test recall, and the test
  images most unlike the training images of their own class.

Everything runs in NumPy elementwise code and torch float64 (whose kernels
`medimg.devices` pins), so the report has the same bytes on every CPU it verifies.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

from medimg.evaluation.logistic import float64_tensor, logistic_fit
from medimg.evaluation.scores import ood_auroc
from medimg.params import ShiftParams

NUMERIC = ("width", "height", "aspect", "jpeg_quality", "mean", "spread", "sharpness",
           "background", "colour")
CATEGORICAL = ("format", "grey")
GREY_COLOUR = 2 / 255  # an image whose channels differ less than this on average is grey
DARK, BRIGHT = 10, 245  # intensities counted as background
DOMAIN_PENALTY = 10.0
MIN_SIDE = 5  # images each side needs for a domain classifier


def jpeg_quality(path: Path) -> float:
    """A JPEG's quality setting (1 to 100) estimated from its luminance quantisation table
    against the standard one (libjpeg's scaling); NaN for other formats."""
    standard = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14,
                         13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22,
                         37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92, 49, 64,
                         78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
    with Image.open(path) as image:
        tables = getattr(image, "quantization", None)
    if not tables:
        return float("nan")
    scale = 100 * np.mean(np.asarray(tables[0], dtype=np.float64)) / standard.mean()
    quality = (200 - scale) / 2 if scale <= 100 else 5000 / scale
    return float(np.clip(np.round(quality), 1, 100))


def pixel_properties(pixels: np.ndarray, chunk: int = 128) -> dict[str, np.ndarray]:
    """Per image of uint8 N x S x S x 3: intensity mean and spread, sharpness (variance of
    the Laplacian), background share and colourfulness, all on a 0..1 scale (a chunk of
    images at a time, so a large split does not sit in memory as float64)."""
    parts = [chunk_properties(np.asarray(pixels[start:start + chunk]))
             for start in range(0, len(pixels), chunk)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def chunk_properties(pixels: np.ndarray) -> dict[str, np.ndarray]:
    values = pixels.astype(np.float64) / 255
    grey = values.mean(axis=3)
    laplacian = (grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1]
                 + grey[:, 2:, 1:-1] - 4 * grey[:, 1:-1, 1:-1])
    intensity = pixels.astype(np.int16).mean(axis=3)
    colour = (values.max(axis=3) - values.min(axis=3)).mean(axis=(1, 2))
    return {"mean": grey.mean(axis=(1, 2)), "spread": grey.std(axis=(1, 2)),
            "sharpness": laplacian.var(axis=(1, 2)),
            "background": ((intensity < DARK) | (intensity > BRIGHT)).mean(axis=(1, 2)),
            "colour": colour}


def image_properties(frame: pd.DataFrame, pixels: np.ndarray, raw_dir: Path) -> pd.DataFrame:
    """One row of properties per image: file-level ones from the split's table and the file
    itself, pixel-level ones from its prepared array."""
    found = pd.DataFrame({"width": frame["width"].astype(float),
                          "height": frame["height"].astype(float)})
    found["aspect"] = found["width"] / found["height"]
    found["format"] = frame["format"].astype(str).to_numpy()
    found["jpeg_quality"] = [jpeg_quality(raw_dir / path) if kind == "JPEG" else np.nan
                             for path, kind in zip(frame["path"], frame["format"], strict=True)]
    for name, values in pixel_properties(pixels).items():
        found[name] = values
    found["grey"] = found["colour"] < GREY_COLOUR
    return found


def ks_statistic(first: np.ndarray, second: np.ndarray) -> float:
    """Kolmogorov-Smirnov's D: the largest gap between the two empirical distributions."""
    points = np.sort(np.concatenate([first, second]))
    gaps = (np.searchsorted(np.sort(first), points, side="right") / len(first)
            - np.searchsorted(np.sort(second), points, side="right") / len(second))
    return float(np.abs(gaps).max())


def total_variation(first: np.ndarray, second: np.ndarray) -> float:
    levels = np.unique(np.concatenate([first, second]))
    return float(0.5 * sum(abs((first == level).mean() - (second == level).mean())
                           for level in levels))


def drift(first: np.ndarray, second: np.ndarray, categorical: bool, permutations: int,
          rng: np.random.Generator) -> dict | None:
    """The drift statistic between two samples and its permutation p-value (the share of
    label shuffles at least as extreme, counting the observed one); None without data."""
    if not categorical:
        first, second = first[~pd.isna(first)], second[~pd.isna(second)]
    if len(first) < 2 or len(second) < 2:
        return None
    statistic = total_variation if categorical else ks_statistic
    observed = statistic(first, second)
    pooled = np.concatenate([first, second])
    extreme = 1
    for _ in range(permutations):
        shuffled = rng.permutation(pooled)
        extreme += statistic(shuffled[:len(first)], shuffled[len(first):]) >= observed - 1e-12
    return {"statistic": round(observed, 4), "p_value": round(extreme / (permutations + 1), 4)}


def domain_auc(first: np.ndarray, second: np.ndarray, groups: np.ndarray, folds: int,
               resamples: int, seed: int) -> dict | None:
    """Cross-validated ROC-AUC of a logistic regression telling FIRST's rows (training)
    from SECOND's, with a bootstrap 95% interval; folds keep each group on one side."""
    if min(len(first), len(second)) < MIN_SIDE:
        return None
    features = np.concatenate([first, second]).astype(np.float64)
    spread = features.std(axis=0)
    features = np.nan_to_num((features - features.mean(axis=0))
                             / np.where(spread > 0, spread, 1.0))
    labels = np.r_[np.zeros(len(first)), np.ones(len(second))]
    splits = min(folds, len(first), len(second))
    scores = np.zeros(len(labels))
    cv = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    for fit, held in cv.split(features, labels, groups):
        if len(np.unique(labels[fit])) < 2:
            return None
        coef = logistic_fit(float64_tensor(features[fit]), torch.from_numpy(labels[fit]),
                            DOMAIN_PENALTY).numpy()
        scores[held] = features[held] @ coef[:-1] + coef[-1]
    rng = np.random.default_rng(seed)
    sides = [np.flatnonzero(labels == side) for side in (0, 1)]
    draws = []
    for _ in range(resamples):
        rows = np.concatenate([rng.choice(side, len(side)) for side in sides])
        chosen, side = scores[rows], labels[rows]
        draws.append(ood_auroc(chosen[side == 0], chosen[side == 1]))
    low, high = np.percentile(draws, [2.5, 97.5])
    auc = ood_auroc(scores[labels == 0], scores[labels == 1])
    return {"auc": round(auc, 4), "low": round(float(low), 4),
            "high": round(float(high), 4), "n": [len(first), len(second)]}


def standardised(train: np.ndarray, *others: np.ndarray) -> list[torch.Tensor]:
    mean, spread = train.mean(axis=0), train.std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    return [float64_tensor((values - mean) / spread) for values in (train, *others)]


def nearest_training(train: np.ndarray, train_labels: np.ndarray, other: np.ndarray,
                     other_labels: np.ndarray) -> np.ndarray:
    """Each row of OTHER's distance to the nearest training row of its own class."""
    train_t, other_t = standardised(train, other)
    distances = np.full(len(other), np.nan)
    for label in np.unique(other_labels):
        mine, theirs = other_labels == label, train_labels == label
        if theirs.any():
            distances[mine] = torch.cdist(other_t[mine], train_t[theirs]).min(dim=1).values
    return distances


def quantiles(values: np.ndarray) -> dict:
    values = values[~np.isnan(values)]
    if not len(values):
        return {"median": None, "p90": None}
    return {"median": round(float(np.median(values)), 4),
            "p90": round(float(np.percentile(values, 90)), 4)}


def property_matrix(found: pd.DataFrame) -> np.ndarray:
    """The numeric properties and grey-or-colour as features for a domain classifier
    (a missing JPEG quality becomes the column's mean after standardising)."""
    return np.column_stack([found[name].to_numpy(dtype=np.float64) for name in NUMERIC]
                           + [found["grey"].to_numpy(dtype=np.float64)])


class ShiftReport:
    """The splits' properties and features, compared overall and class by class."""

    def __init__(self, parts: dict[str, pd.DataFrame], arrays: dict[str, np.ndarray],
                 features: dict[str, np.ndarray], raw_dir: Path, settings: ShiftParams,
                 seed: int) -> None:
        self.parts, self.features, self.settings, self.seed = parts, features, settings, seed
        self.properties = {split: image_properties(parts[split], arrays[split], raw_dir)
                           for split in parts}
        self.labels = {split: part["label"].to_numpy() for split, part in parts.items()}
        self.matrices = {split: property_matrix(found) for split, found in
                         self.properties.items()}
        self.nearest = {split: nearest_training(features["train"], self.labels["train"],
                                                features[split], self.labels[split])
                        for split in ("val", "test")}

    def compare(self, other: str, label: int | None) -> dict:
        """Training against OTHER, on all images or on class LABEL's."""
        def rows(split: str) -> np.ndarray:
            return (np.ones(len(self.labels[split]), dtype=bool) if label is None
                    else self.labels[split] == label)

        mine, theirs = rows("train"), rows(other)
        rng = np.random.default_rng(self.seed)
        props = {name: drift(self.properties["train"][name].to_numpy()[mine],
                             self.properties[other][name].to_numpy()[theirs],
                             name in CATEGORICAL, self.settings.permutations, rng)
                 for name in (*NUMERIC, *CATEGORICAL)}
        groups = np.concatenate([
            (split + ":" + self.parts[split]["group"].astype(str)).to_numpy()[chosen]
            for split, chosen in (("train", mine), (other, theirs))])

        def classifier(values: dict[str, np.ndarray]) -> dict | None:
            return domain_auc(values["train"][mine], values[other][theirs], groups,
                              self.settings.folds, self.settings.resamples, self.seed)

        return {"n": [int(mine.sum()), int(theirs.sum())],
                "domain_auc_features": classifier(self.features),
                "domain_auc_properties": classifier(self.matrices),
                "nearest_training": quantiles(self.nearest[other][theirs]),
                "properties": props}

    def most_unlike(self, predicted: np.ndarray, classes: list[str]) -> list[dict]:
        """The test images farthest from any training image of their own class."""
        order = np.argsort(-np.nan_to_num(self.nearest["test"], nan=-1.0), kind="stable")
        test = self.parts["test"]
        return [{"index": int(i), "path": test["path"].iloc[i], "class": test["class"].iloc[i],
                 "predicted": classes[int(predicted[i])],
                 "distance": round(float(self.nearest["test"][i]), 4)}
                for i in order[:self.settings.sheet]]

    def report(self, classes: list[str], recall: dict[str, dict[str, float]],
               predicted: np.ndarray) -> dict:
        proportions = {split: {name: round(float((labels == index).mean()), 4)
                               for index, name in enumerate(classes)}
                       for split, labels in self.labels.items()}
        per_class = {}
        for index, name in enumerate(classes):
            per_class[name] = {other: self.compare(other, index) for other in ("val", "test")}
            drop = (None if recall["val"].get(name) is None or recall["test"].get(name) is None
                    else round(recall["val"][name] - recall["test"][name], 4))
            per_class[name]["recall"] = {"val": recall["val"].get(name),
                                         "test": recall["test"].get(name), "drop": drop}
        return {"features": "the network's stage features (as the out-of-distribution "
                            "detector reads them)",
                "proportions": proportions,
                "overall": {other: self.compare(other, None) for other in ("val", "test")},
                "per_class": per_class, "most_unlike": self.most_unlike(predicted, classes)}


def headline(report: dict) -> dict[str, float | None]:
    """The shift report's figure for the DVC metrics: how well a classifier tells training
    from test images (the rest, with intervals, per class and against validation, is in
    shift.json; one number keeps `dvc metrics show` on one screen)."""
    found = report["overall"]["test"]["domain_auc_features"]
    return {"shift_auc": None if found is None else found["auc"]}
