"""Stage `ood`: build the out-of-distribution detector from the trained network's stage
features and store it beside the model, where predict and the service find it.

Reads models/model.* and the prepared train and validation splits. The reference is the
training split and jittered copies of it (`medimg.evaluation.jitter`); the threshold is set
on in-distribution sources the reference never saw: MRI slices from other scanners that
ship in packages and jittered copies of the validation split
(`medimg.evaluation.ood_fitting`); of one detector per `ood.k_candidates`, it keeps the one
whose threshold flags the most outlier exposure (photographs, graphics, text and faces that
ship in packages, in no evaluation set). Writes models/ood.safetensors + models/ood.json
(`medimg.evaluation.ood.OodDetector`) and metrics/report/ood.json: how it was built, what a
threshold set without each calibration source accepts of that source (the honest figure
for a new scanner or stain), and what it flags of each outlier-exposure file, with 95%
intervals.
"""

from pathlib import Path

import numpy as np

from medimg.devices import reproducible_cpu
from medimg.errors import run
from medimg.evaluation.ood import left_out_thresholds
from medimg.evaluation.ood_fitting import fitting_set, tuned_detector
from medimg.evaluation.scores import ood_acceptance
from medimg.inference import load_classifier
from medimg.io import write_json
from medimg.params import load_params

PREPARED = Path("data/prepared")
MODEL_DIR = Path("models")
REPORT = Path("metrics/report/ood.json")


def main() -> None:
    params = load_params()
    settings = params.ood
    reproducible_cpu(params.cpu_threads)
    # The CPU, as the service runs: features, and so distances, then match what it computes.
    classifier = load_classifier(MODEL_DIR)

    def features(images: np.ndarray) -> np.ndarray:
        return classifier.predict_with_features(images, settings.batch_size)[1]

    val_images = np.load(PREPARED / "val.npy")
    fitting = fitting_set(features, classifier.config, np.load(PREPARED / "train.npy"),
                          val_images, settings, params.seed)
    detector = tuned_detector(fitting, features(val_images), settings, params.seed)
    detector.save(MODEL_DIR)
    outliers = ood_acceptance({name: detector.score(values) for name, values in
                               fitting.outliers_by_file().items()}, detector.threshold)
    write_json(REPORT, {"k": detector.k, "familiar": detector.familiar,
                        "threshold": detector.threshold, **detector.summary,
                        "left_out_calibration": left_out_thresholds(
                            detector, fitting.calibration, settings.accept_share),
                        "outlier_exposure_flagged": {
                            name: {"n": row["n"], "flagged": round(1 - row["accepted"], 4),
                                   "flagged_low": round(1 - row["accepted_high"], 6),
                                   "flagged_high": round(1 - row["accepted_low"], 6)}
                            for name, row in outliers.items()}})
    print(f"ood: threshold {detector.threshold:g} accepts "
          f"{detector.summary['val_accepted']:.3f} of {len(val_images)} validation images "
          f"and {settings.accept_share:.0%} of the calibration sources; reference of "
          f"{detector.summary['reference_rows']} training images and jittered copies")


if __name__ == "__main__":
    run(main)
