"""What the out-of-distribution detector of issue 27 costs the service: images per second
through the service's model call (`Predictor.predict`: ONNX Runtime, then the detector),
with the detector before issue 27 and now, interleaved in one run; writes
benchmarks/results/ood_cost.json.

    python -m benchmarks.ood_cost --before OLD.onnx [--rounds 15] [--batches 4]

OLD.onnx is the export stage's model.onnx from before issue 27 (its features output is the
pre-logit features; in this repository's DVC cache as
.dvc/cache/files/md5/fb/957b09f7eb2f3da3e938da80cc2b9b). Before: that model and the class
Gaussians minus 0.12 x an outlier Gaussian it was shipped with, refitted here on the same
training and outlier images. Now: models/ as `dvc repro` leaves it. Both answer batches of
32 test images (the service's largest batch). HTTP costs the same either way, so the
service's throughput drops by at most the share measured here.
"""

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd

from benchmarks.ood_tradeoff import gaussians_as_shipped
from medimg.devices import reproducible_cpu
from medimg.docs import results_file
from medimg.evaluation.ood_fitting import fitting_set
from medimg.inference import Classifier, OnnxBackend, in_batches
from medimg.io import write_json
from medimg.params import Params, load_params
from medimg.serving.predictor import load_predictor

REPO = Path(__file__).resolve().parents[1]
PREPARED = REPO / "data/prepared"
COST_FILE = "ood_cost.json"
BATCH = 32
GOAL_DROP = 0.05  # issue 27: the service's throughput drops by at most this share


def before_predict(before: Classifier, train: np.ndarray, labels: np.ndarray,
                   params: Params) -> Callable[[np.ndarray], list]:
    """The service's model call before issue 27: probabilities, pre-logit features, and the
    Gaussian detector's score and flag."""
    def features(images: np.ndarray) -> np.ndarray:
        return before.predict_with_features(images, BATCH)[1]

    fitting = fitting_set(features, before.config, train, params.ood, params.seed)
    score, threshold = gaussians_as_shipped(fitting.inside[:len(train)], labels,
                                            fitting.outside,
                                            features(np.load(PREPARED / "val.npy")))

    def predict(images: np.ndarray) -> list:
        probs, found = before.predict_with_features(images, len(images))
        return list(zip(probs, score(found) <= threshold, strict=True))
    return predict


def rate(predict: Callable[[np.ndarray], list], batches: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for batch in batches:
        predict(batch)
    return sum(len(batch) for batch in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="model.onnx before #27")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batches", type=int, default=4, help="batches per round and side")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results" / COST_FILE)
    args = parser.parse_args()
    if not args.before.is_file():
        sys.exit(f"{args.before}: not found; pass the model.onnx from before issue 27")
    params = load_params(REPO / "params.yaml")
    reproducible_cpu(params.cpu_threads)
    now = load_predictor(REPO / "models", "onnx")
    before = Classifier(OnnxBackend(args.before), now.config)
    train = np.load(PREPARED / "train.npy")
    labels = pd.read_csv(PREPARED / "train.csv")["label"].to_numpy()
    old = before_predict(before, train, labels, params)
    test = np.load(PREPARED / "test.npy")
    batches = [batch for batch in in_batches(np.resize(test, (BATCH * args.batches,
                                                              *test.shape[1:])), BATCH)]
    now.predict(batches[0])
    old(batches[0])
    rates: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(args.rounds):
        rates["now"].append(rate(now.predict, batches))
        rates["before"].append(rate(old, batches))
    median = {name: float(np.median(values)) for name, values in rates.items()}
    drop = 1 - median["now"] / median["before"]
    write_json(args.out, {
        "command": shlex.join(["python", "-m", "benchmarks.ood_cost", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "machine": platform.machine(),
                    "onnxruntime": onnxruntime.__version__},
        "batch": BATCH, "rounds": args.rounds, "images_per_round": BATCH * args.batches,
        "images_per_second": {name: round(value, 1) for name, value in median.items()},
        "rounds_images_per_second": {name: [round(v, 1) for v in values]
                                     for name, values in rates.items()},
        "drop": round(drop, 4), "goal_drop": GOAL_DROP, "met": drop <= GOAL_DROP})
    print(f"before {median['before']:.1f} images/s, now {median['now']:.1f}: "
          f"{drop:+.1%} drop (goal at most {GOAL_DROP:.0%})")


def cost_markdown(root: Path) -> str:
    """The detector's cost to the service, for docs/serving.md."""
    cost = results_file(root, COST_FILE)
    rates = cost["images_per_second"]
    return (f"Its cost: `{cost['command']}` ({cost['rounds']} interleaved rounds of "
            f"{cost['images_per_round']} images in batches of {cost['batch']}, "
            f"{cost['machine']['cpus']} CPU cores, median): {rates['before']} images/s "
            f"through the service's model call with the detector before issue 27, "
            f"{rates['now']} now, a drop of {cost['drop']:.1%} (goal at most "
            f"{cost['goal_drop']:.0%}: {'met' if cost['met'] else 'NOT met'}).")


if __name__ == "__main__":
    main()
