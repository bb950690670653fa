"""The out-of-distribution detector's figures: what it accepts of the test split and of the
packaged evaluation sets, how well it ranks them, and the trade-off over thresholds. The
evaluate stage and benchmarks/ood_tradeoff.py report them the same way."""

import numpy as np

from medimg.evaluation.ood import OodDetector
from medimg.evaluation.references import (
    everyday,
    model_inputs,
    other_modalities,
    source_file,
)
from medimg.evaluation.scores import acceptance_curve, ood_acceptance, ood_auroc
from medimg.inference import Classifier

CURVE_POINTS = 41  # thresholds of the out-of-distribution trade-off curve


def reference_features(classifier: Classifier,
                       batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The network's features of each packaged evaluation set (none of it is fitted on),
    and the package files each set's images came from."""
    references = {"everyday": everyday(), "other_modalities": other_modalities()}
    features = {name: classifier.predict_with_features(model_inputs(images, classifier.config),
                                                       batch_size)[1]
                for name, images in references.items()}
    sources = {name: sorted({source_file(n) for n in images})
               for name, images in references.items()}
    return features, sources


def ood_figures(detector: OodDetector, features: dict[str, np.ndarray]) -> dict:
    """The detector on named sets of features (the test split first, then the reference
    sets): what it accepts, how well it ranks, and the trade-off over thresholds."""
    scores = {name: detector.score(values) for name, values in features.items()}
    return {"threshold": detector.threshold,
            "sets": ood_acceptance(scores, detector.threshold),
            "auroc": {f"{outside}_vs_test": ood_auroc(scores["test"], scores[outside])
                      for outside in ("everyday", "other_modalities")},
            "curve": acceptance_curve(scores, CURVE_POINTS)}


def ood_headline(ood: dict) -> dict[str, float]:
    """The figures the acceptance goals name that the default pipeline can measure: shares
    of everyday photographs flagged and of the test split accepted (the rest is in
    report.json)."""
    sets = ood["sets"]
    return {"ood_flagged": round(1.0 - sets["everyday"]["accepted"], 4),
            "ood_test": round(sets["test"]["accepted"], 4)}
