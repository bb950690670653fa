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

import evaluate
import ood
from conftest import HAS_AVX2, REPO, picture
from medimg.errors import ParamsError
from medimg.evaluation.ood import OodDetector, fit_detector
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
    train, labels = clusters(0, 200, 3.0)
    val, _ = clusters(1, 100, 3.0)
    return fit_detector(train, labels, val, natural(2, 150), components=4,
                        outlier_components=3, contrast=0.1, accept=0.95)


def test_threshold_accepts_the_set_share_of_validation_images() -> None:
    train, labels = clusters(0, 200, 3.0)
    for count, accept in ((100, 0.95), (93, 0.95), (40, 0.8)):
        val, _ = clusters(count, count, 3.0)
        fitted = fit_detector(train, labels, val, natural(2, 150), 4, 3, 0.1, accept)
        accepted = fitted.accepts(val).sum()
        assert accepted == np.ceil(accept * count)
        assert fitted.summary["val_accepted"] == accepted / count


def test_a_reloaded_detector_gives_the_same_scores(detector: OodDetector, tmp_path) -> None:
    detector.save(tmp_path)
    again = OodDetector.load(tmp_path)
    features = np.r_[clusters(5, 20, 3.0)[0], natural(6, 20)]
    assert again.threshold == detector.threshold
    assert np.array_equal(again.score(features), detector.score(features))
    assert again.summary == detector.summary


def test_far_away_features_are_flagged_and_training_like_ones_accepted(
        detector: OodDetector) -> None:
    test, _ = clusters(7, 100, 3.0)
    assert detector.accepts(test).mean() >= 0.9
    far = np.full((1, WIDTH), 50.0)
    assert not detector.accepts(far)[0]
    assert detector.score(far)[0] > detector.score(test).max()
    assert detector.accepts(natural(8, 100)).mean() <= 0.05


# Fits a detector on features made without a matmul (NumPy's own matmul would already
# differ between BLAS kernels) and prints the hash of what it stores and scores.
FIT = """
import hashlib
import numpy as np
from medimg.evaluation.ood import Gaussian
rng = np.random.default_rng(0)
features = rng.normal(size=(300, 96)) * np.linspace(0.1, 3.0, 96)
gaussian = Gaussian.fit(features, rng.integers(0, 2, 300), 8)
parts = [*gaussian.arrays("g").values(), gaussian.distance(features)]
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
    ("contrast", -0.1, "ood.contrast"),
    ("accept", 1.5, "ood.accept"),
    ("components", 0, "ood.components"),
    ("outlier_images", 1, "ood.outlier_images"),
    ("componets", 8, "unknown key 'ood.componets' (did you mean 'ood.components'?)"),
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
    write_params(folder, outlier_images=60, components=4, outlier_components=4)
    return folder


def test_the_stage_stores_a_detector_beside_the_model(stage_folder, monkeypatch) -> None:
    monkeypatch.chdir(stage_folder)
    ood.main()
    detector = OodDetector.load(Path("models"))
    report = yaml.safe_load(Path("metrics/report/ood.json").read_text())
    assert report["threshold"] == detector.threshold
    assert report["fitted_on"] == {"train": 40, "outliers": 60, "val": 20}
    assert report["val_accepted"] == 0.95
    assert "sklearn/datasets/images/china.jpg" in report["outlier_sources"]
    classifier = load_classifier(Path("models"))
    val = np.load("data/prepared/val.npy")
    assert detector.accepts(classifier.predict_with_features(val, 8)[1]).sum() == 19

    result = evaluate.out_of_distribution(classifier, detector,
                                          classifier.predict_with_features(val, 8)[1], 16)
    assert {name: figures["n"] for name, figures in result["sets"].items()} == {
        "test": 20, "external": 101, "everyday": len(EVERYDAY_FILES), "other_modalities": 10}
    assert result["curve"][-1]["everyday_accepted"] == 1.0
    assert set(ood_headline(result)) == {
        "ood_flagged", "ood_test", "ood_external"}
