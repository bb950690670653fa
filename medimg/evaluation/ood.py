"""Out-of-distribution detection: does an image look like the images the model was trained
on, and is it an image of that kind at all?

The score is the cosine distance from an image's stage features (each feature stage's
output, pooled and concatenated: `medimg.inference.logits_and_features`, free in the same
forward pass) to its k-th nearest neighbour in a reference set: the training split and
jittered copies of it (`medimg.evaluation.jitter`: other contrasts, bias fields and stains,
so that a new scanner or stain still has neighbours), drawn down to at most
`reference_size` rows so that the search costs the same whatever the training set's size.
Nothing is fitted: the score asks how far an image is from the images themselves, not what
a classifier learned to tell apart, so it holds on photographs no fit has seen
(benchmarks/ood_tradeoff.py measured the alternatives on held-out sources).

Two boundaries turn a distance into one of three verdicts (`VERDICTS`):
- familiar, up to the validation split's `familiar_share` quantile: looks like the
  training images;
- unfamiliar, up to `threshold`: unlike them, check the image;
- outside, above `threshold`: not an image of the training domain at all; flagged.
`threshold` is set on in-distribution sources the reference never saw (MRI from other
scanners that ship in packages, jittered validation MRI, jittered validation H&E), as the
distance that accepts `accept_share` of them, each source weighted equally: a share of
new-source images accepted, not a validation quantile, which rejects every new scanner.

Saved as ood.safetensors (the reference, float16, and the validation split's sorted
distances) and ood.json (boundaries, settings, summary) beside the model.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from medimg.io import read_json, write_json
from medimg.params import OodParams
from medimg.training.models import save_weights

WEIGHTS_NAME = "ood.safetensors"
CONFIG_NAME = "ood.json"
VERDICTS = ("familiar", "unfamiliar", "outside")
QUERY_CHUNK = 256  # queries per similarity matrix: 256 x the reference rows of float32
DECIMALS = 4  # boundaries are stored rounded: the last float bits vary between CPUs


def unit_rows(features: np.ndarray) -> torch.Tensor:
    """Float32 rows scaled to length 1 (cosine similarity is then a dot product)."""
    rows = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def kth_distance(reference: torch.Tensor, features: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance from each row of `features` to its k-th nearest reference row."""
    queries = unit_rows(features)
    found = [1.0 - (chunk @ reference.T).topk(k, dim=1).values[:, -1]
             for chunk in queries.split(QUERY_CHUNK)]
    return torch.cat(found).double().numpy() if found else np.zeros(0)


def accepting_threshold(sources: dict[str, np.ndarray], share: float) -> float:
    """The smallest distance (rounded up to DECIMALS) at or below which the mean over
    SOURCES of the share of each source's distances accepted reaches `share`."""
    candidates = np.unique(np.concatenate(list(sources.values())))
    accepted = np.mean([np.searchsorted(np.sort(values), candidates, side="right")
                        / len(values) for values in sources.values()], axis=0)
    reached = candidates[np.flatnonzero(accepted >= share - 1e-12)[0]]
    return math.ceil(float(reached) * 10 ** DECIMALS) / 10 ** DECIMALS


@dataclass(frozen=True)
class OodDetector:
    reference: np.ndarray  # R x D float16: unit-length stage features of the reference set
    validation_scores: np.ndarray  # the validation split's distances, ascending
    k: int
    familiar: float  # at or below: looks like the training images
    threshold: float  # above: not an image of the training domain at all (flagged)
    domain: str  # what the training images are, in words ("a brain MRI or H&E image")
    summary: dict  # how it was built: counts, settings, shares accepted

    def __post_init__(self) -> None:
        # The float32 copy the distances are computed on, made once per detector.
        object.__setattr__(self, "_reference", torch.from_numpy(
            np.ascontiguousarray(self.reference, dtype=np.float32)))

    def score(self, features: np.ndarray) -> np.ndarray:
        """Cosine distance of each image (N x D stage features) to its k-th nearest
        reference image: 0 for a copy of one, up to 2."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.reference.shape[1]:
            raise ValueError(f"OOD detector expects N x {self.reference.shape[1]} features, "
                             f"got {features.shape}")
        return kth_distance(self._reference, features, self.k)

    def accepts(self, features: np.ndarray) -> np.ndarray:
        """True where an image is not flagged (distance <= threshold)."""
        return self.score(features) <= self.threshold

    def verdicts(self, scores: np.ndarray) -> list[str]:
        """Each distance as one of VERDICTS."""
        level = (np.asarray(scores) > self.familiar).astype(int) + (
            np.asarray(scores) > self.threshold)
        return [VERDICTS[value] for value in level]

    def share_scoring_higher(self, scores: np.ndarray) -> np.ndarray:
        """For each distance, the share of validation images farther from the reference:
        how many of the images the model was checked on look less like its training data."""
        below = np.searchsorted(self.validation_scores, np.asarray(scores), side="right")
        return 1.0 - below / len(self.validation_scores)

    def save(self, model_dir: Path) -> None:
        save_weights(model_dir / WEIGHTS_NAME,
                     {"reference": torch.from_numpy(self.reference),
                      "validation_scores": torch.from_numpy(self.validation_scores)},
                     "out-of-distribution reference")
        write_json(model_dir / CONFIG_NAME, {"k": self.k, "familiar": self.familiar,
                                             "threshold": self.threshold,
                                             "domain": self.domain, **self.summary})

    @classmethod
    def load(cls, model_dir: Path) -> "OodDetector | None":
        """The detector saved in `model_dir`, or None when it has none."""
        if not (model_dir / CONFIG_NAME).is_file():
            return None
        config = read_json(model_dir / CONFIG_NAME)
        arrays = load_file(str(model_dir / WEIGHTS_NAME))
        fields = ("k", "familiar", "threshold", "domain")
        summary = {key: value for key, value in config.items() if key not in fields}
        return cls(arrays["reference"], arrays["validation_scores"],
                   *(config[name] for name in fields), summary)


def drawn_rows(rows: int, size: int, seed: int) -> np.ndarray:
    """At most `size` of `rows` row numbers, drawn with `seed`, in order."""
    if rows <= size:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))


def build_detector(reference: np.ndarray, val: np.ndarray, calibration: dict[str, np.ndarray],
                   k: int, settings: OodParams, seed: int) -> OodDetector:
    """The detector of REFERENCE features (the training split and its jittered copies, at
    most `settings.reference_size` of them), scoring the distance to the K-th nearest; its
    threshold accepts `accept_share` of the CALIBRATION sources (named features of
    in-distribution images the reference does not hold), its familiar boundary
    `familiar_share` of the validation split (never above the threshold)."""
    accept_share = settings.accept_share
    kept = drawn_rows(len(reference), settings.reference_size, seed)
    unit = unit_rows(reference[kept])
    stored = unit.half().numpy()
    scored = torch.from_numpy(stored.astype(np.float32))
    val_scores = np.sort(kth_distance(scored, val, k))
    distances = {name: kth_distance(scored, values, k) for name, values in calibration.items()}
    threshold = accepting_threshold(distances, accept_share)
    familiar = min(threshold, accepting_threshold({"val": val_scores},
                                                  settings.familiar_share))
    summary = {"features": int(reference.shape[1]), "reference_rows": len(kept),
               "reference_candidates": len(reference), "accept_share": accept_share,
               "familiar_share": settings.familiar_share,
               "calibration_accepted": {name: round(float((values <= threshold).mean()), 4)
                                        for name, values in distances.items()},
               "val_accepted": round(float((val_scores <= threshold).mean()), 4),
               "val_familiar": round(float((val_scores <= familiar).mean()), 4)}
    return OodDetector(stored, val_scores, k, familiar, threshold, settings.domain, summary)


def left_out_thresholds(detector: OodDetector, calibration: dict[str, np.ndarray],
                        accept_share: float) -> dict[str, dict]:
    """Each calibration source's share accepted by a threshold set on the others: what a
    source the threshold never saw gets (the honest figure for a new scanner or stain).
    Empty with fewer than two sources."""
    distances = {name: detector.score(values) for name, values in calibration.items()}
    found = {}
    if len(distances) < 2:
        return found
    for name, values in distances.items():
        rest = {other: d for other, d in distances.items() if other != name}
        threshold = accepting_threshold(rest, accept_share)
        found[name] = {"threshold": threshold, "n": len(values),
                       "accepted": round(float((values <= threshold).mean()), 4)}
    return found
