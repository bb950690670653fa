"""Classify new images with the trained model.

    medimg predict PATH... [--out FILE.csv|FILE.json] [--model DIR]
                   [--backend torch|onnx] [--gradcam DIR]

PATH may be files, folders (searched recursively for images) and glob patterns; DICOM
files (.dcm) give one row per frame. Each input is decoded by the dedup stage's rules and
limits (from the model's model.json) and resized as in training, a batch at a time, so a
folder of any size is never held in memory at once. The output has one row per image:
path, frame (multi-frame DICOM only), predicted class, one probability column per class
(prob_<class>), in_distribution, ood_verdict, ood_score and validation_scoring_higher
(empty when the model has no out-of-distribution detector; in_distribution false, verdict
`outside`, means the image is not of the training domain at all, and it is still
classified; `unfamiliar` means it is unlike the training images; the share of validation
images that score higher says how unusual it is) and error (empty, or why that file could not be
classified). The exit status is non-zero only when no input could be classified. --model
may also be an ensemble folder (scripts/ensemble.py): the mean of its members'
probabilities.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medimg.errors import UserError
from medimg.inference import Ensemble, expand_inputs
from medimg.io import atomic_path, write_csv, write_json
from medimg.serving.predictor import Frame, Predictor, load_predictor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medimg predict", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files, folders or globs")
    parser.add_argument("--out", type=Path, help="CSV or JSON file (default: CSV on stdout)")
    parser.add_argument("--model", type=Path, default=Path("models"),
                        help="folder with model.safetensors and model.json, or an "
                             "ensemble folder (ensemble.json and one folder per member)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gradcam", type=Path, help="save Grad-CAM overlays here (needs "
                        "model.safetensors, whatever the backend)")
    return parser.parse_args(argv)


def empty_row(frame: Frame, classes: list[str]) -> dict:
    return {"path": frame.name, "frame": frame.frame, "predicted": "",
            **{f"prob_{c}": np.nan for c in classes}, "in_distribution": None,
            "ood_verdict": "", "ood_score": np.nan, "validation_scoring_higher": np.nan,
            "error": frame.error or ""}


def fill(rows: list[dict], pending: list[tuple[int, Frame]], predictor: Predictor,
         gradcam: Path | None) -> None:
    """Classify the decoded images waiting in `pending` in one batch, into their rows."""
    if not pending:
        return
    answers = predictor.predict(np.stack([frame.pixels for _, frame in pending]))
    for (row, frame), answer in zip(pending, answers, strict=True):
        rows[row].update(predicted=answer["predicted"], in_distribution=answer["in_distribution"],
                         ood_verdict=answer["ood_verdict"], ood_score=answer["ood_score"],
                         validation_scoring_higher=answer["validation_scoring_higher"],
                         **{f"prob_{c}": p for c, p in answer["probabilities"].items()})
        if gradcam:
            target = predictor.config.classes.index(answer["predicted"])
            save_gradcam(predictor.gradcam_png(frame.pixels, target), frame, gradcam)
    pending.clear()


def classify(paths: list[str], args: argparse.Namespace) -> pd.DataFrame:
    predictor = load_predictor(args.model, args.backend)
    if args.gradcam and isinstance(predictor.classifier, Ensemble):
        raise UserError(f"--gradcam: {args.model} is an ensemble; Grad-CAM explains one "
                         f"model, so pass one member's folder")
    classes = predictor.config.classes
    rows: list[dict] = []
    pending: list[tuple[int, Frame]] = []
    for path, error in expand_inputs(paths):
        frames = [Frame(path, None, None, error)] if error else predictor.decode(Path(path), path)
        for frame in frames:
            rows.append(empty_row(frame, classes))
            if frame.pixels is not None:
                pending.append((len(rows) - 1, frame))
            if len(pending) == args.batch_size:
                fill(rows, pending, predictor, args.gradcam)
    fill(rows, pending, predictor, args.gradcam)
    return pd.DataFrame(rows).astype({"frame": "Int64"})


def save_gradcam(png: bytes, frame: Frame, folder: Path) -> None:
    stem = Path(frame.name).with_suffix("").as_posix().strip("/").replace("/", "__")
    name = stem + ("" if frame.frame is None else f"__frame{frame.frame}") + ".png"
    with atomic_path(folder / name) as tmp:
        tmp.write_bytes(png)


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

