"""Out-of-distribution detection: does an image look like the images the model was trained
on at all?

A penalised logistic regression tells the in-distribution images from outlier-exposure
images on the network's stage features (each feature stage's output, pooled:
`medimg.inference.logits_and_features`). Early stages keep texture and colour, which the
fine-tuned head forgets, so a photograph stands apart from a scan there. The
in-distribution side is the training split, jittered copies of it
(`medimg.evaluation.jitter`: other contrasts, bias fields and stains, so that a new scanner
or stain still counts) and MRI slices from other scanners that ship in packages; the other
side is photographs, graphics, text and faces that ship in packages
(`medimg.evaluation.references`). The score is the log-odds of "not like the training
data"; an image scoring above `threshold` is flagged. benchmarks/ood_tradeoff.py chooses
the threshold and the penalty on sources it then leaves out of the figures it reports.

The fit runs in torch float64 (Newton's method), whose kernels `medimg.devices` pins, so
the stored detector has the same bytes on every CPU it verifies. Saved as ood.safetensors
(standardisation, weights, the validation split's sorted scores) and ood.json (threshold,
settings, fit summary) beside the model. The validation scores turn a score into words:
the share of validation images that score higher.
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
ARRAYS = ("mean", "scale", "weights", "validation_scores")
NEWTON_STEPS = 100
NEWTON_TOLERANCE = 1e-10


def float64_tensor(array: np.ndarray) -> torch.Tensor:
    """A C-ordered float64 copy: the matmul's result depends on its operands' memory
    layout, so a reloaded detector must see the layout the fitted one did."""
    return torch.tensor(np.ascontiguousarray(array, dtype=np.float64))


def logistic_fit(features: torch.Tensor, outside: torch.Tensor,
                 penalty: float) -> torch.Tensor:
    """Weights (bias last) of the logistic regression of `outside` (0 or 1) on standardised
    `features`, each class weighted to half the total, with `penalty`/2 x |w|^2 (bias not
    penalised): sklearn's LogisticRegression(C=1/penalty, class_weight="balanced")."""
    design = torch.cat([features, torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    counts = torch.bincount(outside.long(), minlength=2).double()
    weight = (len(outside) / (2 * counts))[outside.long()]
    ridge = torch.full((design.shape[1],), penalty, dtype=torch.float64)
    ridge[-1] = 0.0
    coef = torch.zeros(design.shape[1], dtype=torch.float64)
    for _ in range(NEWTON_STEPS):
        p = torch.sigmoid(design @ coef)
        gradient = design.T @ (weight * (p - outside)) + ridge * coef
        hessian = (design.T * (weight * p * (1 - p))) @ design + torch.diag(ridge + 1e-9)
        step = torch.linalg.solve(hessian, gradient)
        coef = coef - step
        if float(step.abs().max()) < NEWTON_TOLERANCE:
            break
    return coef


@dataclass(frozen=True)
class OodDetector:
    mean: np.ndarray  # D: the fitting set's feature means
    scale: np.ndarray  # D: and standard deviations
    weights: np.ndarray  # D + 1: the logistic regression's, bias last
    validation_scores: np.ndarray  # the validation split's scores, ascending
    threshold: float
    summary: dict  # how it was fitted: counts, settings, validation acceptance

    def score(self, features: np.ndarray) -> np.ndarray:
        """Log-odds that each image is not like the training data; N x D features to N
        scores (in torch, whose kernels reproducible_cpu pins, as the fit)."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != len(self.mean):
            raise ValueError(f"OOD detector expects N x {len(self.mean)} features, got "
                             f"{features.shape}")
        mean, scale, weights = (float64_tensor(a) for a in (self.mean, self.scale,
                                                            self.weights))
        standard = (float64_tensor(features) - mean) / scale
        return (standard @ weights[:-1] + weights[-1]).numpy()

    def accepts(self, features: np.ndarray) -> np.ndarray:
        """True where an image looks like the training data (score <= threshold)."""
        return self.score(features) <= self.threshold

    def share_scoring_higher(self, scores: np.ndarray) -> np.ndarray:
        """For each score, the share of validation images that score higher: how many of
        the images the model was checked on look less like its training data."""
        below = np.searchsorted(self.validation_scores, np.asarray(scores), side="right")
        return 1.0 - below / len(self.validation_scores)

    def save(self, model_dir: Path) -> None:
        save_weights(model_dir / WEIGHTS_NAME,
                     {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name)))
                      for name in ARRAYS},
                     "out-of-distribution detector")
        write_json(model_dir / CONFIG_NAME, {"threshold": self.threshold, **self.summary})

    @classmethod
    def load(cls, model_dir: Path) -> "OodDetector | None":
        """The detector saved in `model_dir`, or None when it has none."""
        if not (model_dir / CONFIG_NAME).is_file():
            return None
        config = read_json(model_dir / CONFIG_NAME)
        arrays = load_file(str(model_dir / WEIGHTS_NAME))
        summary = {key: value for key, value in config.items() if key != "threshold"}
        return cls(*(arrays[name] for name in ARRAYS), config["threshold"], summary)


def fit_detector(inside: np.ndarray, outside: np.ndarray, val: np.ndarray, penalty: float,
                 threshold: float) -> OodDetector:
    """Fit on in-distribution and outlier-exposure features; `val` (the validation split)
    calibrates the scores and says how much of it the threshold accepts."""
    both = float64_tensor(np.concatenate([inside, outside]))
    mean, scale = both.mean(dim=0), both.std(dim=0)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    labels = torch.cat([torch.zeros(len(inside)), torch.ones(len(outside))]).double()
    weights = logistic_fit((both - mean) / scale, labels, penalty)
    unscored = OodDetector(mean.numpy(), scale.numpy(), weights.numpy(), np.zeros(1),
                           threshold, {})
    scores = np.sort(unscored.score(val))
    summary = {"features": int(inside.shape[1]), "penalty": penalty,
               "fitted_on": {"inside": len(inside), "outside": len(outside),
                             "val": len(val)},
               "val_accepted": float((scores <= threshold).mean())}
    return OodDetector(unscored.mean, unscored.scale, unscored.weights, scores, threshold,
                       summary)


def left_out_scores(inside: np.ndarray, outside: np.ndarray, val: np.ndarray,
                    sources: dict[str, tuple[str, np.ndarray]], penalty: float,
                    threshold: float) -> dict[str, np.ndarray]:
    """Each named source's scores from a detector fitted without it: SOURCES maps a name to
    ("inside" or "outside", the boolean mask of its rows in that side's features)."""
    scores = {}
    for name, (side, rows) in sources.items():
        kept = (inside[~rows], outside) if side == "inside" else (inside, outside[~rows])
        detector = fit_detector(*kept, val, penalty, threshold)
        scores[name] = detector.score((inside if side == "inside" else outside)[rows])
    return scores
