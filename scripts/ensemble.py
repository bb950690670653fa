"""Build an ensemble of trained models and score it against its members on one test split.

    python scripts/ensemble.py OUT_DIR --rev EXP --rev EXP ... [--tta] [--out FILE.json]
    python scripts/ensemble.py OUT_DIR --model DIR --model DIR ... [--tta]

Members come from DVC experiments or commits (`--rev`: their models/model.safetensors and
models/model.json, read through dvc.api from DVC's cache) or from model folders
(`--model`). OUT_DIR gets one folder per member and ensemble.json, so that
`medimg predict --model OUT_DIR` uses the ensemble like one model. Every member and the
ensemble (with `--tta` also over each image's flips) are then scored on the workspace's
prepared test split: the same images for all, so the ensemble's gain over the best member
is a paired difference with its own interval. The test split must be one none of the
members trained on: a fixed test folder (`split.respect_existing`) or the same split seed.
With dedup.keep_test_copies the test folder's own copies are marked, and everything is
scored a second time without them (`without_test_copies`).
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medimg.evaluation.metrics import accuracy, macro_f1
from medimg.evaluation.scores import full_metrics, headline, paired_difference_interval
from medimg.inference import ENSEMBLE_NAME, Ensemble, load_classifier
from medimg.io import atomic_dir, write_json
from medimg.params import load_params
from medimg.training.models import CONFIG_NAME, WEIGHTS_NAME

MODEL_DIR = "models"
TEST = Path("data/prepared")


def fetch_rev(rev: str, target: Path) -> None:
    """A DVC revision's (experiment's) model files, from DVC's cache."""
    import dvc.api

    target.mkdir(parents=True)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        with dvc.api.open(f"{MODEL_DIR}/{name}", rev=rev, mode="rb") as source, \
                (target / name).open("wb") as copy:
            shutil.copyfileobj(source, copy)


def build(out_dir: Path, revs: list[str], models: list[Path], tta: bool) -> list[str]:
    """Write the ensemble folder: member0, member1, ... and ensemble.json."""
    sources = [f"rev {rev}" for rev in revs] + [f"folder {folder}" for folder in models]
    names = [f"member{index}" for index in range(len(sources))]
    with atomic_dir(out_dir) as tmp:
        for index, rev in enumerate(revs):
            fetch_rev(rev, tmp / names[index])
        for index, folder in enumerate(models, start=len(revs)):
            (tmp / names[index]).mkdir()
            for file in (WEIGHTS_NAME, CONFIG_NAME):
                shutil.copy2(folder / file, tmp / names[index] / file)
        write_json(tmp / ENSEMBLE_NAME, {"members": names, "tta": tta, "sources": sources})
    return sources


def paired(labels: np.ndarray, best: np.ndarray, other: np.ndarray, resamples: int,
           seed: int) -> dict:
    """The other model's accuracy and macro F1 minus the best member's, on the same images."""
    result = {}
    for short, metric in (("acc", accuracy), ("f1", macro_f1)):
        value, (low, high) = paired_difference_interval(
            labels, best.argmax(1), other.argmax(1), metric, resamples, seed)
        result[short] = {"value": round(value, 4), "low": round(low, 4), "high": round(high, 4)}
    return result


def comparison(labels: np.ndarray, member_probs: list[np.ndarray], sources: list[str],
               combined: dict[str, np.ndarray], classes: list[str], resamples: int,
               seed: int) -> dict:
    """Every member's and every combined model's headline metrics on the same images, each
    combined one with its paired difference to the best member."""
    def scores(probs: np.ndarray) -> dict:
        return headline(full_metrics(labels, probs, classes, resamples, seed))

    members = [scores(probs) for probs in member_probs]
    best = max(range(len(members)), key=lambda i: members[i]["acc"])
    return {"test_images": len(labels), "best_member": sources[best],
            "members": [{"source": source, **row}
                        for source, row in zip(sources, members, strict=True)],
            **{name: {**scores(probs), "minus_best_member": paired(
                labels, member_probs[best], probs, resamples, seed)}
               for name, probs in combined.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="the ensemble folder to write")
    parser.add_argument("--rev", action="append", default=[], help="a DVC experiment or commit")
    parser.add_argument("--model", action="append", default=[], type=Path,
                        help="a folder with model.safetensors and model.json")
    parser.add_argument("--tta", action="store_true", help="also average over flipped views")
    parser.add_argument("--out", type=Path, help="write the scores as JSON")
    args = parser.parse_args(argv)
    if len(args.rev) + len(args.model) < 2:
        raise SystemExit("ensemble: give at least two members (--rev or --model)")
    params = load_params()
    resamples, seed = params.evaluate.bootstrap_resamples, params.seed
    sources = build(args.out_dir, args.rev, args.model, args.tta)
    ensemble = load_classifier(args.out_dir)
    pixels = np.load(TEST / "test.npy")
    table = pd.read_csv(TEST / "test.csv", dtype=str, keep_default_na=False)
    labels = table["label"].astype(int).to_numpy()
    batch = params.evaluate.batch_size
    member_probs = [Ensemble([member]).predict(pixels, batch) for member in ensemble.members]
    combined = {"ensemble": Ensemble(ensemble.members).predict(pixels, batch)}
    if args.tta:
        combined["ensemble_tta"] = ensemble.predict(pixels, batch)

    def compare(rows: np.ndarray) -> dict:
        return comparison(labels[rows], [probs[rows] for probs in member_probs], sources,
                          {name: probs[rows] for name, probs in combined.items()},
                          ensemble.config.classes, resamples, seed)

    result = compare(np.ones(len(labels), dtype=bool))
    if "test_copy" in table:  # dedup.keep_test_copies: also the de-duplicated test set
        result["without_test_copies"] = compare((table["test_copy"] == "").to_numpy())
    if args.out:
        write_json(args.out, result)
    for name, row in [*((m["source"], m) for m in result["members"]),
                      *((name, result[name]) for name in combined)]:
        print(f"{name}: accuracy {row['acc']:.4f} [{row['acc_lo']:.4f}, {row['acc_hi']:.4f}]")
    gain = result["ensemble"]["minus_best_member"]["acc"]
    print(f"ensemble minus best member: {gain['value']:+.4f} [{gain['low']:+.4f}, "
          f"{gain['high']:+.4f}] on {len(labels)} test images; wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
