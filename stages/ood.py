"""Stage `ood`: fit the out-of-distribution detector on the trained network's penultimate
features and store it beside the model, where predict and the service find it.

Reads models/model.* and the prepared train and validation splits; draws the
outlier-exposure images from packaged photographs, graphics and text
(`medimg.evaluation.references.outlier_exposure`). Writes models/ood.safetensors + models/ood.json
(`medimg.evaluation.ood.OodDetector`) and metrics/report/ood.json (how it was fitted and where its
threshold lies).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from medimg.devices import reproducible_cpu
from medimg.errors import run
from medimg.evaluation.ood import fit_detector
from medimg.evaluation.references import model_inputs, outlier_exposure, source_file
from medimg.inference import Classifier, load_classifier
from medimg.io import write_json
from medimg.params import load_params

PREPARED = Path("data/prepared")
MODEL_DIR = Path("models")
REPORT = Path("metrics/report/ood.json")


def features(classifier: Classifier, images: np.ndarray, batch_size: int) -> np.ndarray:
    return classifier.predict_with_features(images, batch_size)[1]


def main() -> None:
    params = load_params()
    settings = params.ood
    reproducible_cpu(params.cpu_threads)
    # The CPU, as the service runs: features, and so scores, then match what it computes.
    classifier = load_classifier(MODEL_DIR)
    labels = pd.read_csv(PREPARED / "train.csv")["label"].to_numpy()
    train, val = (features(classifier, np.load(PREPARED / f"{split}.npy", mmap_mode="r"),
                           settings.batch_size) for split in ("train", "val"))
    outliers = outlier_exposure(settings.outlier_images, params.seed)
    outlier_features = features(classifier, model_inputs(outliers, classifier.config),
                                settings.batch_size)
    detector = fit_detector(train, labels, val, outlier_features, settings.components,
                            settings.outlier_components, settings.contrast, settings.accept)
    detector.save(MODEL_DIR)
    write_json(REPORT, {"threshold": detector.threshold, "contrast": detector.contrast,
                        **detector.summary,
                        "outlier_sources": sorted({source_file(name) for name in outliers})})
    print(f"ood: threshold {detector.threshold:.2f} accepts "
          f"{detector.summary['val_accepted']:.3f} of {len(val)} validation images; fitted "
          f"on {len(train)} training and {len(outliers)} outlier-exposure images")


if __name__ == "__main__":
    run(main)
