"""Out-of-distribution detection on the network's penultimate (pre-logits) features.

The score contrasts two Gaussians: the distance to the nearest medical class (class means
with one shared covariance, fitted on the training split) minus `contrast` times the
distance to a Gaussian of natural images, graphics and text (outlier exposure with images
that ship in packages, `medimg.evaluation.references.outlier_exposure`). Higher is less like the
training data. Fine-tuned features alone barely tell a photograph from a scan; the
contrast moves photographs away, at the cost of also moving images from new scanners
(the trade-off is measured by the evaluate stage).

Each Gaussian is a probabilistic PCA: its `components` leading directions get their own
variances, the rest one shared noise variance. That keeps the stored detector small (no
D x D matrix) and the covariance well conditioned with fewer images than dimensions. The
threshold accepts a set share of the validation split. Saved as ood.safetensors (arrays,
float64 so a reloaded detector scores exactly the same) and ood.json (threshold, settings,
fit summary) beside the model.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from medimg.io import read_json, write_json
from medimg.training.models import save_weights

WEIGHTS_NAME = "ood.safetensors"
CONFIG_NAME = "ood.json"
PARTS = ("means", "components", "variances")


def float64_tensor(array: np.ndarray) -> torch.Tensor:
    """A C-ordered float64 copy: the matmul's result depends on its operands' memory
    layout, so a reloaded detector must see the layout the fitted one did."""
    return torch.tensor(np.ascontiguousarray(array, dtype=np.float64))


@dataclass(frozen=True)
class Gaussian:
    """Gaussians with these means and one shared covariance, in probabilistic-PCA form:
    variance `variances[j]` along `components[j]`, `noise` in every other direction."""
    means: np.ndarray  # K x D
    components: np.ndarray  # k x D, orthonormal rows
    variances: np.ndarray  # k
    noise: float

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, components: int) -> "Gaussian":
        features = np.asarray(features, dtype=np.float64)
        groups = np.unique(labels)
        means = np.stack([features[labels == group].mean(axis=0) for group in groups])
        centred = features - means[np.searchsorted(groups, labels)]
        # torch's LAPACK (MKL) rather than NumPy's: medimg.devices.reproducible_cpu pins
        # MKL's code path, while OpenBLAS picks its kernels by CPU once NumPy is loaded.
        _, singular, directions = (np.ascontiguousarray(part) for part in torch.linalg.svd(
            float64_tensor(centred), full_matrices=False))
        variances = singular ** 2 / len(features)
        k = min(components, len(variances) - 1)
        # The mean variance of the directions left out, over all of them (PPCA's estimate);
        # floored so that a direction no training image varies in cannot divide by zero.
        rest = variances[k:].sum() / (features.shape[1] - k)
        noise = max(float(rest), 1e-6 * float(variances[0]))
        return cls(means, directions[:k], np.maximum(variances[:k], noise), noise)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to the nearest mean (in torch, whose
        kernels reproducible_cpu pins, as in `fit`)."""
        features, components, variances = (float64_tensor(array) for array in (
            features, self.components, self.variances))
        distances = []
        for mean in float64_tensor(self.means):
            centred = features - mean
            along = centred @ components.T
            rest = (centred ** 2).sum(dim=1) - (along ** 2).sum(dim=1)
            distances.append((along ** 2 / variances).sum(dim=1)
                             + rest.clamp(min=0.0) / self.noise)
        return torch.stack(distances).min(dim=0).values.numpy()

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.{part}": getattr(self, part) for part in PARTS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str,
                    noise: float) -> "Gaussian":
        return cls(*(arrays[f"{prefix}.{part}"] for part in PARTS), noise)


@dataclass(frozen=True)
class OodDetector:
    medical: Gaussian
    outliers: Gaussian
    contrast: float
    threshold: float
    summary: dict  # how it was fitted: counts, settings, validation acceptance

    def score(self, features: np.ndarray) -> np.ndarray:
        """Higher is less like the training data; N x D features to N scores."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.medical.means.shape[1]:
            raise ValueError(f"OOD detector expects N x {self.medical.means.shape[1]} "
                             f"features, got {features.shape}")
        return (self.medical.distance(features)
                - self.contrast * self.outliers.distance(features))

    def accepts(self, features: np.ndarray) -> np.ndarray:
        """True where an image looks like the training data (score <= threshold)."""
        return self.score(features) <= self.threshold

    def save(self, model_dir: Path) -> None:
        arrays = {**self.medical.arrays("medical"), **self.outliers.arrays("outliers")}
        save_weights(model_dir / WEIGHTS_NAME,
                     {name: torch.from_numpy(np.ascontiguousarray(value))
                      for name, value in arrays.items()},
                     "out-of-distribution detector")
        write_json(model_dir / CONFIG_NAME, {
            "threshold": self.threshold, "contrast": self.contrast,
            "noise": {"medical": self.medical.noise, "outliers": self.outliers.noise},
            **self.summary})

    @classmethod
    def load(cls, model_dir: Path) -> "OodDetector | None":
        """The detector saved in `model_dir`, or None when it has none."""
        if not (model_dir / CONFIG_NAME).is_file():
            return None
        config = read_json(model_dir / CONFIG_NAME)
        arrays = load_file(str(model_dir / WEIGHTS_NAME))
        summary = {key: value for key, value in config.items()
                   if key not in ("threshold", "contrast", "noise")}
        return cls(Gaussian.from_arrays(arrays, "medical", config["noise"]["medical"]),
                   Gaussian.from_arrays(arrays, "outliers", config["noise"]["outliers"]),
                   config["contrast"], config["threshold"], summary)


def fit_detector(train: np.ndarray, labels: np.ndarray, val: np.ndarray,
                 outliers: np.ndarray, components: int, outlier_components: int,
                 contrast: float, accept: float) -> OodDetector:
    """Fit on training and outlier-exposure features; the threshold accepts the share
    `accept` of the validation features."""
    medical = Gaussian.fit(train, labels, components)
    natural = Gaussian.fit(outliers, np.zeros(len(outliers), dtype=np.int64),
                           outlier_components)
    unthresholded = OodDetector(medical, natural, contrast, np.inf, {})
    scores = unthresholded.score(val)
    # The lowest validation score that accepts at least the share `accept` of them.
    threshold = float(np.quantile(scores, accept, method="inverted_cdf"))
    summary = {"features": int(train.shape[1]), "components": components,
               "outlier_components": outlier_components, "accept": accept,
               "fitted_on": {"train": len(train), "outliers": len(outliers),
                             "val": len(val)},
               "val_accepted": float((scores <= threshold).mean())}
    return OodDetector(medical, natural, contrast, threshold, summary)
