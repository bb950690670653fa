"""What the out-of-distribution detector is fitted on: the training images, their jittered
copies and the packaged MRI from other scanners against the outlier-exposure images, as the
network's features, with the source of each row. The ood stage and
benchmarks/ood_tradeoff.py build it the same way."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medimg.evaluation.jitter import jittered
from medimg.evaluation.references import (
    external_mri,
    model_inputs,
    outlier_exposure,
    source_file,
)
from medimg.params import OodParams
from medimg.training.models import ModelConfig

TRAIN_SOURCE = "training split"  # what the training images and their jittered copies are


@dataclass(frozen=True)
class FittingSet:
    """The detector's fitting features, and the source of each row: the training split,
    or the package file an image came from."""
    inside: np.ndarray
    inside_sources: np.ndarray
    outside: np.ndarray
    outside_sources: np.ndarray

    def packaged_sources(self) -> dict[str, tuple[str, np.ndarray]]:
        """Every packaged source, as `left_out_scores` takes them: side and rows."""
        return {**{name: ("inside", self.inside_sources == name)
                   for name in np.unique(self.inside_sources) if name != TRAIN_SOURCE},
                **{name: ("outside", self.outside_sources == name)
                   for name in np.unique(self.outside_sources)}}


def fitting_set(features: Callable[[np.ndarray], np.ndarray], config: ModelConfig,
                train: np.ndarray, settings: OodParams, seed: int) -> FittingSet:
    """The training images, their jittered copies and the packaged MRI from other scanners
    against the outlier-exposure images, through `features` (uint8 images to N x D)."""
    mri = external_mri()
    outliers = outlier_exposure(settings.outlier_images, seed)
    copies = jittered(train, settings.jitter_copies, seed)
    inside = np.concatenate([features(train), features(copies),
                             features(model_inputs(mri, config))])
    inside_sources = np.array([TRAIN_SOURCE] * (len(train) + len(copies))
                              + [source_file(name) for name in mri])
    return FittingSet(inside, inside_sources, features(model_inputs(outliers, config)),
                      np.array([source_file(name) for name in outliers]))
