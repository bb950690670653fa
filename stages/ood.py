"""Stage `ood`: fit the out-of-distribution detector on the trained network's stage
features and store it beside the model, where predict and the service find it.

Reads models/model.* and the prepared train and validation splits; jitters the training
images (`medimg.evaluation.jitter`), adds MRI slices from other scanners and draws the
outlier-exposure images from photographs, graphics, text and faces, all of which ship in
packages (`medimg.evaluation.references`). Writes models/ood.safetensors + models/ood.json
(`medimg.evaluation.ood.OodDetector`) and metrics/report/ood.json: how it was fitted, and
what a detector fitted without each packaged source makes of that source (leave one
source out, with 95% intervals): the honest figure for images from sources it never saw.
"""

from pathlib import Path

import numpy as np

from medimg.devices import reproducible_cpu
from medimg.errors import run
from medimg.evaluation.ood import fit_detector, left_out_scores
from medimg.evaluation.ood_fitting import fitting_set
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
    # The CPU, as the service runs: features, and so scores, then match what it computes.
    classifier = load_classifier(MODEL_DIR)

    def features(images: np.ndarray) -> np.ndarray:
        return classifier.predict_with_features(images, settings.batch_size)[1]

    val = features(np.load(PREPARED / "val.npy", mmap_mode="r"))
    fitting = fitting_set(features, classifier.config, np.load(PREPARED / "train.npy"),
                          settings, params.seed)
    detector = fit_detector(fitting.inside, fitting.outside, val, settings.penalty,
                            settings.threshold)
    detector.save(MODEL_DIR)
    sources = fitting.packaged_sources()
    left_out = ood_acceptance(left_out_scores(fitting.inside, fitting.outside, val, sources,
                                              settings.penalty, settings.threshold),
                              settings.threshold)
    write_json(REPORT, {"threshold": detector.threshold, **detector.summary,
                        "leave_one_source_out": {
                            name: {"side": sources[name][0], **figures}
                            for name, figures in left_out.items()}})
    print(f"ood: threshold {detector.threshold:g} accepts "
          f"{detector.summary['val_accepted']:.3f} of {len(val)} validation images; fitted "
          f"on {len(fitting.inside)} training-like and {len(fitting.outside)} "
          "outlier-exposure images")


if __name__ == "__main__":
    run(main)
