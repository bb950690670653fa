"""What the out-of-distribution detector is built from, as the network's stage features:
the reference (the training split and jittered copies of it), the calibration sources its
threshold is set on (in-distribution images the reference does not hold), and the
outlier-exposure images it is checked against. The ood stage and
benchmarks/ood_tradeoff.py build them the same way."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medimg.errors import ParamsError
from medimg.evaluation.jitter import is_grey, jittered
from medimg.evaluation.ood import OodDetector, build_detector
from medimg.evaluation.references import (
    external_mri,
    model_inputs,
    outlier_exposure,
    source_file,
)
from medimg.params import OodParams
from medimg.training.models import ModelConfig

# The calibration sources, by what their images are.
EXTERNAL_MRI = "packaged MRI from other scanners"
OTHER_CONTRASTS = "validation split, other contrasts"
OTHER_STAINS = "validation split, other stains"


@dataclass(frozen=True)
class FittingSet:
    """The detector's features: its reference, its calibration sources by name, and the
    outlier-exposure images with the package file each came from."""
    reference: np.ndarray
    calibration: dict[str, np.ndarray]
    outliers: np.ndarray
    outlier_sources: np.ndarray

    def outliers_by_file(self) -> dict[str, np.ndarray]:
        return {name: self.outliers[self.outlier_sources == name]
                for name in np.unique(self.outlier_sources)}

    def outliers_flagged(self, detector: OodDetector) -> float:
        """The share of outlier-exposure images the detector flags, averaged over their
        package files."""
        return round(float(np.mean([(detector.score(values) > detector.threshold).mean()
                                    for values in self.outliers_by_file().values()])), 4)


def tuned_detector(fitting: FittingSet, val: np.ndarray, settings: OodParams,
                   seed: int) -> OodDetector:
    """The detector, among one per `settings.k_candidates`, whose calibrated threshold
    flags the most outlier exposure (ties: the smaller k): packaged images that are in no
    evaluation set. Its summary keeps every candidate's share. A k above the reference's
    rows is left out."""
    candidates = [k for k in settings.k_candidates if k <= len(fitting.reference)]
    if not candidates:
        raise ParamsError(f"ood.k_candidates: every k is above the reference's "
                          f"{len(fitting.reference)} rows; give a smaller one")
    flagged, built = {}, {}
    for k in candidates:
        built[k] = build_detector(fitting.reference, val, fitting.calibration, k, settings,
                                  seed)
        flagged[k] = fitting.outliers_flagged(built[k])
    best = max(candidates, key=lambda k: (flagged[k], -k))
    built[best].summary["outliers_flagged_by_k"] = {str(k): v for k, v in flagged.items()}
    return built[best]


def calibration_images(val: np.ndarray, copies: int, seed: int) -> dict[str, np.ndarray]:
    """In-distribution images the reference does not hold, by source: `copies` (at least
    one) jittered copies of each validation image (greyscale: other contrasts; colour:
    other stains), kept apart from the training split's copies by their own seed. Empty
    sources are left out."""
    copies = jittered(val, max(copies, 1), seed + 1)
    grey = np.array([is_grey(image) for image in copies], dtype=bool)
    found = {OTHER_CONTRASTS: copies[grey], OTHER_STAINS: copies[~grey]}
    return {name: images for name, images in found.items() if len(images)}


def fitting_set(features: Callable[[np.ndarray], np.ndarray], config: ModelConfig,
                train: np.ndarray, val: np.ndarray, settings: OodParams,
                seed: int) -> FittingSet:
    """The reference, calibration and outlier-exposure features, through `features` (uint8
    images to N x D). The packaged MRI count as in-distribution when the training split
    holds greyscale images (scans)."""
    reference = np.concatenate([features(train),
                                features(jittered(train, settings.jitter_copies, seed))])
    calibration = {name: features(images) for name, images in
                   calibration_images(val, settings.jitter_copies, seed).items()}
    if any(is_grey(image) for image in train):
        calibration = {EXTERNAL_MRI: features(model_inputs(external_mri(), config)),
                       **calibration}
    outliers = outlier_exposure(settings.outlier_images, seed)
    return FittingSet(reference, calibration, features(model_inputs(outliers, config)),
                      np.array([source_file(name) for name in outliers]))
