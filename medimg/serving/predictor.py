"""Files to answers, one way for `medimg predict` and the service: decode by the model's
own rules, resize as in training, one batched model call, and the out-of-distribution flag.

The decoding limits (the dedup stage's `max_pixels` and `min_side`) come from the model's
model.json, so a model is always served with the rules its training data passed. The
probabilities come from `Classifier.predict` / `predict_with_features`, the batched
inference of evaluate and export too; the flag from the `OodDetector` stored beside the
model (none for an ensemble or a model folder without ood.json), with its verdict in
words: familiar, unfamiliar (check the image) or outside (not the training domain at all).
"""

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medimg.data.hashing import file_sha256
from medimg.data.images import ImageError, Source, check_min_side, load_frames
from medimg.data.prepared import resize_square
from medimg.errors import ModelError
from medimg.evaluation.gradcam import gradcam_png
from medimg.evaluation.ood import OodDetector
from medimg.inference import (
    ENSEMBLE_NAME,
    ONNX_NAME,
    Classifier,
    Ensemble,
    EnsembleConfig,
    load_classifier,
)
from medimg.training.models import CONFIG_NAME, WEIGHTS_NAME, ModelConfig, load_checkpoint


@dataclass(frozen=True)
class Frame:
    """One image of an input: a file, or one frame of a multi-frame DICOM."""
    name: str
    frame: int | None  # frame number in a multi-frame DICOM, else None
    pixels: np.ndarray | None  # uint8 S x S x 3, the model's input size; None on error
    error: str | None  # why the image cannot be classified


def model_identity(model_dir: Path, backend: str, config: ModelConfig | EnsembleConfig) -> dict:
    """What every answer names: the hash of the file that computes it, classes, size."""
    if (model_dir / ENSEMBLE_NAME).is_file():
        served = model_dir / ENSEMBLE_NAME
    else:
        served = model_dir / (ONNX_NAME if backend == "onnx" else WEIGHTS_NAME)
    return {"sha256": file_sha256(served), "file": served.name, "classes": config.classes,
            "image_size": config.image_size, "backend": backend}


class Predictor:
    """A served model: `decode` a file, then `predict` a batch of decoded images."""

    def __init__(self, model_dir: Path, classifier: Classifier | Ensemble,
                 detector: OodDetector | None, identity: dict) -> None:
        self.model_dir, self.classifier, self.detector = model_dir, classifier, detector
        self.identity = identity
        self.config = classifier.config
        self.rules = self.config.decode  # model.json without it does not load (ModelConfig)
        self._explainer: torch.nn.Module | None = None
        self._explainer_lock = threading.Lock()

    def decode(self, source: Source, name: str) -> list[Frame]:
        """The file's images resized to the model's input, one per frame; a file that
        cannot be used gives one Frame with the reason."""
        try:
            decoded = load_frames(source, self.rules.max_pixels)
        except ImageError as err:
            return [Frame(name, None, None, str(err))]
        frames = []
        for index, image in enumerate(decoded):
            number = index if len(decoded) > 1 else None
            try:
                check_min_side(image.pixels, self.rules.min_side)
            except ImageError as err:
                frames.append(Frame(name, number, None, str(err)))
                continue
            pixels = resize_square(image.pixels, self.config.image_size, self.config.resize)
            frames.append(Frame(name, number, pixels, None))
        return frames

    def predict(self, images: np.ndarray) -> list[dict]:
        """One answer per uint8 N x S x S x 3 image, from one batched model call."""
        classes = self.config.classes
        scores = accepted = higher = verdicts = None
        if self.detector is None:
            probs = self.classifier.predict(images, len(images))
        else:
            probs, features = self.classifier.predict_with_features(images, len(images))
            scores = self.detector.score(features)
            accepted = scores <= self.detector.threshold
            higher = self.detector.share_scoring_higher(scores)
            verdicts = self.detector.verdicts(scores)
        return [{"predicted": classes[int(prob.argmax())],
                 "probabilities": {c: round(float(p), 6) for c, p in zip(classes, prob,
                                                                         strict=True)},
                 "in_distribution": None if accepted is None else bool(accepted[row]),
                 "ood_verdict": None if verdicts is None else verdicts[row],
                 "ood_score": None if scores is None else round(float(scores[row]), 4),
                 "validation_scoring_higher": None if higher is None
                 else round(float(higher[row]), 4)}
                for row, prob in enumerate(probs)]

    def gradcam_png(self, pixels: np.ndarray, target: int) -> bytes:
        """The Grad-CAM overlay of class `target` on one decoded image, as PNG bytes; it
        needs the PyTorch checkpoint, loaded once on first use."""
        if isinstance(self.classifier, Ensemble):
            raise ModelError("Grad-CAM explains one model, not an ensemble")
        # A model of its own: Grad-CAM's hooks must not see a batch predicted meanwhile.
        with self._explainer_lock:
            if self._explainer is None:
                self._explainer = load_checkpoint(self.model_dir)[0]
            return gradcam_png(self._explainer, pixels, target, self.config.mean,
                               self.config.std)


def load_predictor(model_dir: Path, backend: str = "onnx", serving: bool = False,
                   threads: int = 0) -> Predictor:
    """The model in `model_dir` (a checkpoint folder or an ensemble folder) behind
    `backend` (onnx or torch; ONNX Runtime set up for a server when `serving`, on
    `threads` threads per call, 0 for one per core), with its out-of-distribution detector
    when it has one."""
    if not any((model_dir / name).is_file() for name in (CONFIG_NAME, ENSEMBLE_NAME)):
        raise ModelError(f"--model {model_dir}: no {CONFIG_NAME} (or {ENSEMBLE_NAME}) there; "
                         "train one with dvc repro, or point --model at a model folder")
    classifier = load_classifier(model_dir, backend, serving=serving, threads=threads)
    detector = None if isinstance(classifier, Ensemble) else OodDetector.load(model_dir)
    identity = model_identity(model_dir, backend, classifier.config)
    if detector is not None:
        identity["ood_domain"] = detector.domain  # what the page's flag says it is not
    return Predictor(model_dir, classifier, detector, identity)
