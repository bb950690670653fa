import os
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

import evaluate
import ood
from conftest import HAS_AVX2, REPO, picture
from medimg.errors import ParamsError
from medimg.evaluation.jitter import jittered
from medimg.evaluation.ood import OodDetector, fit_detector, left_out_scores
from medimg.evaluation.ood_figures import ood_headline
from medimg.evaluation.references import (
    EVERYDAY_FILES,
    everyday,
    external_mri,
    other_modalities,
    outlier_exposure,
    source_file,
)
from medimg.evaluation.scores import acceptance_curve, ood_acceptance, ood_auroc
from medimg.inference import load_classifier
from medimg.params import load_params

WIDTH = 24  # feature dimension of the synthetic detectors


def clusters(seed: int, count: int, centre: float) -> tuple[np.ndarray, np.ndarray]:
    """Features of two classes around +-`centre` on the first axis, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    features = rng.normal(0.0, 1.0, (count, WIDTH))
    features[:, 0] += np.where(labels == 1, centre, -centre)
    return features, labels


def natural(seed: int, count: int) -> np.ndarray:
    """Outlier-exposure features: elsewhere, and spread wider."""
    return np.random.default_rng(seed).normal(6.0, 2.0, (count, WIDTH))


@pytest.fixture(scope="module")
def detector() -> OodDetector:
    train, _ = clusters(0, 200, 3.0)
    val, _ = clusters(1, 100, 3.0)
    return fit_detector(train, natural(2, 150), val, penalty=1.0, threshold=0.0)


def test_the_fit_is_sklearns_balanced_logistic_regression() -> None:
    inside, outside = clusters(0, 200, 1.0)[0], natural(2, 60) / 4
    fitted = fit_detector(inside, outside, inside[:10], penalty=4.0, threshold=0.0)
    both = np.r_[inside, outside]
    standard = (both - both.mean(axis=0)) / both.std(axis=0, ddof=1)
    reference = LogisticRegression(C=0.25, class_weight="balanced", tol=1e-12,
                                   max_iter=10_000).fit(standard, np.r_[np.zeros(200),
                                                                        np.ones(60)])
    assert fitted.score(both) == pytest.approx(reference.decision_function(standard), abs=1e-6)


def test_the_threshold_is_on_the_log_odds_and_counts_the_validation_share() -> None:
    train, val = clusters(0, 200, 3.0)[0], clusters(1, 100, 3.0)[0]
    for threshold in (-2.0, 0.0, 3.0):
        fitted = fit_detector(train, natural(2, 150), val, 1.0, threshold)
        scores = fitted.score(val)
        assert np.array_equal(fitted.accepts(val), scores <= threshold)
        assert fitted.summary["val_accepted"] == (scores <= threshold).mean()


def test_the_share_scoring_higher_ranks_a_score_among_the_validation_images(
        detector: OodDetector) -> None:
    val = clusters(1, 100, 3.0)[0]
    scores = np.sort(detector.score(val))
    shares = detector.share_scoring_higher(np.r_[scores[0] - 1, scores[49], scores[-1],
                                                 scores[-1] + 1])
    assert shares.tolist() == [1.0, 0.5, 0.0, 0.0]


def test_a_reloaded_detector_gives_the_same_scores(detector: OodDetector, tmp_path) -> None:
    detector.save(tmp_path)
    again = OodDetector.load(tmp_path)
    features = np.r_[clusters(5, 20, 3.0)[0], natural(6, 20)]
    assert again.threshold == detector.threshold
    assert np.array_equal(again.score(features), detector.score(features))
    assert np.array_equal(again.share_scoring_higher(again.score(features)),
                          detector.share_scoring_higher(detector.score(features)))
    assert again.summary == detector.summary


def test_far_away_features_are_flagged_and_training_like_ones_accepted(
        detector: OodDetector) -> None:
    test, _ = clusters(7, 100, 3.0)
    assert detector.accepts(test).mean() >= 0.9
    assert detector.accepts(natural(8, 100)).mean() <= 0.05
    assert not detector.accepts(np.full((1, WIDTH), 50.0))[0]


def test_a_left_out_source_is_scored_by_a_detector_fitted_without_it() -> None:
    inside, outside, val = clusters(0, 200, 3.0)[0], natural(2, 150), clusters(1, 50, 3.0)[0]
    moved = np.zeros(200, dtype=bool)
    moved[:20] = True
    inside[moved, 1] += 4.0  # a source unlike the rest of the training side
    scores = left_out_scores(inside, outside, val, {"moved": ("inside", moved),
                                                    "photos": ("outside", np.arange(150) < 30)},
                             1.0, 0.0)
    without = fit_detector(inside[~moved], outside, val, 1.0, 0.0)
    assert np.array_equal(scores["moved"], without.score(inside[moved]))
    kept = fit_detector(inside, outside, val, 1.0, 0.0)
    assert scores["moved"].mean() > kept.score(inside[moved]).mean()
    assert len(scores["photos"]) == 30


# Fits a detector on features made without a matmul (NumPy's own matmul would already
# differ between BLAS kernels) and prints the hash of what it stores and scores.
FIT = """
import hashlib
import numpy as np
from medimg.evaluation.ood import ARRAYS, fit_detector
rng = np.random.default_rng(0)
features = rng.normal(size=(300, 96)) * np.linspace(0.1, 3.0, 96)
detector = fit_detector(features, features[:100] * 2 + 3, features[100:150], 1.0, 0.0)
parts = [*(getattr(detector, name) for name in ARRAYS), detector.score(features)]
print(hashlib.md5(b"".join(part.tobytes() for part in parts)).hexdigest())
"""


@pytest.mark.skipif(not HAS_AVX2, reason="OpenBLAS's Haswell kernels need AVX2")
def test_the_detector_does_not_depend_on_which_blas_kernels_numpy_picked() -> None:
    # NumPy's OpenBLAS chooses its kernels by CPU when it loads, too early for
    # reproducible_cpu to pin; the detector's linear algebra runs in torch (MKL, pinned).
    def fitted(core: str) -> str:
        env = {**os.environ, "OPENBLAS_CORETYPE": core}
        return subprocess.run([sys.executable, "-c", FIT], cwd=REPO / "stages", env=env,
                              capture_output=True, text=True, check=True).stdout.strip()

    assert fitted("Haswell") == fitted("Prescott")


def test_jittered_copies_change_contrast_or_stain_and_repeat_with_the_seed() -> None:
    grey = np.repeat(np.linspace(0, 255, 32 * 32).reshape(32, 32, 1), 3, axis=2)
    pink = np.stack([np.full((32, 32), 230), np.full((32, 32), 120), np.full((32, 32), 200)],
                    axis=2)
    images = np.stack([grey, pink]).astype(np.uint8)
    copies = jittered(images, 3, seed=5)
    assert copies.shape == (6, 32, 32, 3) and copies.dtype == np.uint8
    assert all(np.ptp(copy.astype(int), axis=2).max() == 0 for copy in copies[:3])
    assert all(not np.array_equal(copy, images[index // 3]) for index, copy in
               enumerate(copies))
    assert np.array_equal(copies, jittered(images, 3, seed=5))
    assert not np.array_equal(copies, jittered(images, 3, seed=6))


def test_a_model_folder_without_a_detector_has_none(tmp_path) -> None:
    assert OodDetector.load(tmp_path) is None


def test_features_of_another_width_are_refused(detector: OodDetector) -> None:
    with pytest.raises(ValueError, match=f"N x {WIDTH} features, got \\(3, 5\\)"):
        detector.score(np.zeros((3, 5)))


@pytest.fixture(scope="module")
def references() -> dict[str, dict[str, np.ndarray]]:
    return {"everyday": everyday(), "other_modalities": other_modalities(),
            "external": external_mri(), "outlier_exposure": outlier_exposure(300, 0)}


def test_reference_sets_hold_the_promised_images(references) -> None:
    sizes = {name: len(images) for name, images in references.items()}
    assert sizes == {"everyday": len(EVERYDAY_FILES), "other_modalities": 10,
                     "external": 101, "outlier_exposure": 300}
    assert sizes["everyday"] >= 14
    for images in references.values():
        for pixels in images.values():
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
            assert min(pixels.shape[:2]) >= 8 and pixels.std() > 0


def test_reference_sets_share_no_source_file(references) -> None:
    files = {name: {source_file(image) for image in images}
             for name, images in references.items()}
    names = list(files)
    for index, first in enumerate(names):
        for second in names[index + 1:]:
            assert not files[first] & files[second], (first, second)
    kinds = {name.split("#")[1][:4] for name in references["outlier_exposure"] if "#" in name}
    assert {"crop", "page"} <= kinds  # crops and text pages besides the whole images


def test_outlier_exposure_is_the_same_for_the_same_seed() -> None:
    first, again, other = (outlier_exposure(40, seed) for seed in (3, 3, 4))
    assert list(first) == list(again)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert list(first) != list(other)


def write_params(folder: Path, **ood_settings: object) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ood"].update(ood_settings)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder / "params.yaml"


@pytest.mark.parametrize(("key", "value", "stated"), [
    ("penalty", 0, "ood.penalty"),
    ("jitter_copies", -1, "ood.jitter_copies"),
    ("outlier_images", 1, "ood.outlier_images"),
    ("penalti", 8, "unknown key 'ood.penalti' (did you mean 'ood.penalty'?)"),
])
def test_bad_ood_params_stop_with_the_key_named(tmp_path, key, value, stated) -> None:
    with pytest.raises(ParamsError, match=stated.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?")):
        load_params(write_params(tmp_path, **{key: value}))


def test_evaluation_figures_of_a_detector() -> None:
    scores = {"test": np.array([0.0, 1.0, 2.0, 5.0]), "everyday": np.array([3.0, 6.0])}
    figures = ood_acceptance(scores, threshold=2.5)
    assert figures["test"]["n"] == 4 and figures["test"]["accepted"] == 0.75
    assert figures["everyday"]["accepted"] == 0.0 and figures["everyday"]["accepted_high"] < 1
    assert ood_auroc(scores["test"], scores["everyday"]) == 0.875
    curve = acceptance_curve(scores, points=5)
    assert curve[0] == {"threshold": 0.0, "test_accepted": 0.25, "everyday_accepted": 0.0}
    assert curve[-1] == {"threshold": 6.0, "test_accepted": 1.0, "everyday_accepted": 1.0}
    assert all(a["test_accepted"] <= b["test_accepted"] for a, b in pairwise(curve))


@pytest.fixture(scope="module")
def stage_folder(tiny_model, tmp_path_factory) -> Path:
    """A working folder as the ood stage sees it: a tiny model and prepared splits."""
    folder = tmp_path_factory.mktemp("stage")
    shutil.copytree(tiny_model, folder / "models")
    prepared = folder / "data/prepared"
    prepared.mkdir(parents=True)
    for split, start, count in (("train", 0, 40), ("val", 1000, 20)):
        labels = np.arange(count) % 2
        np.save(prepared / f"{split}.npy", np.stack(
            [picture(start + i, bool(label), 32) for i, label in enumerate(labels)]))
        pd.DataFrame({"label": labels}).to_csv(prepared / f"{split}.csv", index=False)
    write_params(folder, outlier_images=60, jitter_copies=1)
    return folder


def test_the_stage_stores_a_detector_beside_the_model(stage_folder, monkeypatch) -> None:
    monkeypatch.chdir(stage_folder)
    ood.main()
    detector = OodDetector.load(Path("models"))
    report = yaml.safe_load(Path("metrics/report/ood.json").read_text())
    params = load_params()
    assert report["threshold"] == detector.threshold == params.ood.threshold
    assert report["fitted_on"] == {"inside": 40 + 40 + 101, "outside": 60, "val": 20}
    classifier = load_classifier(Path("models"))
    val = classifier.predict_with_features(np.load("data/prepared/val.npy"), 8)[1]
    assert report["val_accepted"] == detector.accepts(val).mean()
    # Each packaged source, left out of the fit once: the extra MRI files and the outliers.
    left_out = report["leave_one_source_out"]
    assert left_out["nibabel/tests/data/anatomical.nii"]["side"] == "inside"
    assert left_out["nibabel/tests/data/anatomical.nii"]["n"] == 99
    assert left_out["sklearn/datasets/images/china.jpg"]["side"] == "outside"
    assert "training split" not in left_out
    assert all(0 <= row["accepted_low"] <= row["accepted"] <= row["accepted_high"] <= 1
               for row in left_out.values())

    result = evaluate.out_of_distribution(classifier, detector, val, 16)
    assert {name: figures["n"] for name, figures in result["sets"].items()} == {
        "test": 20, "everyday": len(EVERYDAY_FILES), "other_modalities": 10}
    assert result["curve"][-1]["everyday_accepted"] == 1.0
    assert set(ood_headline(result)) == {"ood_flagged", "ood_test"}
