"""Classify new images with the trained model.

    python stages/predict.py PATH... [--out FILE.csv|FILE.json] [--model DIR]
                             [--backend torch|onnx] [--gradcam DIR]

PATH may be files, folders (searched recursively for images) and glob patterns. Each
input is decoded by the dedup stage's rules and resized as in training. The output has
one row per input: path, predicted class, one probability column per class (prob_<class>)
and error (empty, or why that file could not be classified). The exit status is non-zero
only when no input could be classified. --model may also be an ensemble folder
(scripts/ensemble.py): the mean of its members' probabilities.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medimg.data import prepare_image
from medimg.gradcam import grad_cam, overlay
from medimg.images import ImageError
from medimg.inference import (
    Classifier,
    Ensemble,
    as_tensor,
    expand_inputs,
    load_classifier,
    normalise,
)
from medimg.io import atomic_path, write_csv, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files, folders or globs")
    parser.add_argument("--out", type=Path, help="CSV or JSON file (default: CSV on stdout)")
    parser.add_argument("--model", type=Path, default=Path("models"),
                        help="folder with model.safetensors and model.json, or an "
                             "ensemble folder (ensemble.json and one folder per member)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gradcam", type=Path, help="save Grad-CAM overlays here (torch)")
    return parser.parse_args(argv)


def decode(path: str, config: dict) -> tuple[np.ndarray | None, str]:
    try:
        return prepare_image(Path(path), config["image_size"], config["resize"]), ""
    except ImageError as err:
        return None, str(err)


def classify(paths: list[str], args: argparse.Namespace) -> pd.DataFrame:
    classifier = load_classifier(args.model, args.backend)
    if args.gradcam and isinstance(classifier, Ensemble):
        raise SystemExit(f"--gradcam: {args.model} is an ensemble; Grad-CAM explains one "
                         f"model, so pass one member's folder")
    config, classes = classifier.config, classifier.config["classes"]
    rows, ready = [], []
    for path, error in expand_inputs(paths):
        pixels, error = (None, error) if error else decode(path, config)
        rows.append({"path": path, "predicted": "", **{f"prob_{c}": np.nan for c in classes},
                     "error": error})
        if pixels is not None:
            ready.append((len(rows) - 1, pixels))
    if not ready:
        return pd.DataFrame(rows)
    probs = classifier.predict(np.stack([pixels for _, pixels in ready]), args.batch_size)
    for (row, pixels), prob in zip(ready, probs, strict=True):
        rows[row]["predicted"] = classes[int(prob.argmax())]
        rows[row].update({f"prob_{c}": round(float(p), 6) for c, p in zip(classes, prob,
                                                                          strict=True)})
        if args.gradcam and args.backend == "torch":
            save_gradcam(classifier, pixels, int(prob.argmax()), rows[row]["path"], args.gradcam)
    return pd.DataFrame(rows)


def save_gradcam(classifier: Classifier, pixels: np.ndarray, target: int, path: str,
                 folder: Path) -> None:
    config = classifier.config
    image = normalise(as_tensor(pixels[None]), config["mean"], config["std"])[0]
    cam = grad_cam(classifier.backend.model, image, target)
    name = Path(path).with_suffix("").as_posix().strip("/").replace("/", "__") + ".png"
    with atomic_path(folder / name) as tmp:
        Image.fromarray(overlay(pixels, cam)).save(tmp, format="PNG")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = classify(args.paths, args)
    if args.out is None:
        table.to_csv(sys.stdout, index=False, lineterminator="\n")
    elif args.out.suffix.lower() == ".json":  # json, not pandas: it would write "a\/b.png"
        write_json(args.out, table.astype(object).where(table.notna(), None)
                   .to_dict(orient="records"))
    else:
        write_csv(args.out, table)
    failed = int((table["error"] != "").sum())
    print(f"predict: {len(table) - failed} classified, {failed} failed", file=sys.stderr)
    return 0 if failed < len(table) else 1


if __name__ == "__main__":
    sys.exit(main())
