"""What the peer servers share, so that each serves the model exactly as `medimg serve` does.

Not run on its own: fastapi_plain.py, bentoml_service.py and ray_serve_app.py import it
(from their own folder, which is on sys.path when they run). The model is loaded as
`medimg serve` loads it (`load_predictor(..., serving=True)`, one BLAS thread for the
detector's small matrix products), warmed up the same way (one call on a full batch of
blank images), and every upload becomes the same answer: one result per file, or per
frame of a multi-frame DICOM, in upload order, `{"model": ..., "results": [...]}`, with
the keys of medimg.serving.service's FileResult (less gradcam); a frame that cannot be
classified gets its error and nulls. What differs between the peers is only the serving
stack: how the upload is read, how images are batched and how the answer is written.
"""

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from medimg.serving.predictor import Frame, Predictor, load_predictor

HOST = "127.0.0.1"  # loopback only: these servers exist to be load-tested beside ours
MAX_BATCH = 32  # images per model call, as `medimg serve --max-batch 32`
MAX_WAIT_MS = 2.0  # as `medimg serve --max-wait-ms 2`
MODEL_ENV = "MEDIMG_PEER_MODEL"  # the model folder, for servers that import this module
# The keys of a result after file and frame, as medimg.serving.service.FileResult has them
# (less gradcam, which no peer offers), null unless the frame was classified.
UNCLASSIFIED = dict.fromkeys(("predicted", "probabilities", "in_distribution", "ood_verdict",
                              "ood_score", "validation_scoring_higher", "error"))


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """--model and --port, the same for every peer; the host is fixed to loopback."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, default=Path("models"),
                        help="model folder with model.json, model.onnx and ood.json")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    args.model = args.model.resolve()  # worker processes may start in another folder
    return args


def load(model_dir: Path) -> Predictor:
    """The model as `medimg serve` loads it (medimg/serving/serve.py main()), so that
    every peer does the same work per image: ONNX Runtime set up for serving, one BLAS
    thread. Keep in step with serve.py."""
    threadpool_limits(1, user_api="blas")
    return load_predictor(model_dir, "onnx", serving=True)


def model_dir_from_env() -> Path:
    """The model folder a launcher passed on in MODEL_ENV (BentoML imports the service
    module in a worker process of its own, with no command line of ours)."""
    if MODEL_ENV not in os.environ:
        raise RuntimeError(f"{MODEL_ENV} is not set: start the server with its script")
    return Path(os.environ[MODEL_ENV])


def warm_up(predictor: Predictor, batch: int = MAX_BATCH) -> None:
    """One model call on a full batch of blank images, as `medimg serve` makes before
    /readyz says ready: no request pays for the first call or the largest batch's memory."""
    size = predictor.config.image_size
    predictor.predict(np.zeros((batch, size, size, 3), np.uint8))


def decode(predictor: Predictor, uploads: list[tuple[bytes, str]]) -> list[Frame]:
    """The frames of (data, file name) uploads, in order, by the model's decode rules."""
    return [frame for data, name in uploads for frame in predictor.decode(data, name)]


def pixels(frames: list[Frame]) -> np.ndarray | None:
    """The usable frames' images as one uint8 N x S x S x 3 array; None when none is."""
    usable = [frame.pixels for frame in frames if frame.pixels is not None]
    return np.stack(usable) if usable else None


def results(frames: list[Frame], predictions: list[dict]) -> list[dict]:
    """One result per frame, in order: the usable ones take the predictions in turn; a
    frame that cannot be classified has its error and nulls, as in our service's answer."""
    answers = iter(predictions)
    return [{"file": frame.name, "frame": frame.frame, **UNCLASSIFIED,
             **({"error": frame.error} if frame.pixels is None else next(answers))}
            for frame in frames]


def answer(predictor: Predictor, frames: list[Frame], predictions: list[dict]) -> dict:
    """The /predict body: the model's identity and one result per frame."""
    return {"model": predictor.identity, "results": results(frames, predictions)}


def classify(predictor: Predictor, uploads: list[tuple[bytes, str]]) -> dict:
    """Decode and predict in one go, one model call per request: the unbatched peer."""
    frames = decode(predictor, uploads)
    images = pixels(frames)
    return answer(predictor, frames, [] if images is None else predictor.predict(images))


class BatchSizes:
    """Images per model call, counted since the start and printed at most every `every`
    seconds (on the next call), so a run shows that, and how much, batching happened
    without a metrics stack of its own."""

    def __init__(self, name: str, every: float = 5.0) -> None:
        self.name, self.every = name, every
        self.sizes: Counter[int] = Counter()
        self.printed = time.monotonic()

    def observe(self, size: int) -> None:
        self.sizes[size] += 1
        if time.monotonic() - self.printed >= self.every:
            self.printed = time.monotonic()
            calls = sum(self.sizes.values())
            images = sum(size * count for size, count in self.sizes.items())
            # stderr, not a logger: each stack configures logging its own way.
            print(f"{self.name}: {calls} model calls, {images} images, mean batch "
                  f"{images / calls:.1f}, sizes {dict(sorted(self.sizes.items()))}",
                  file=sys.stderr, flush=True)
