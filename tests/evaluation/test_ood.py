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
from medimg.evaluation.jitter import is_grey, jittered
from medimg.evaluation.ood import (
    DECIMALS,
    OodDetector,
    accepting_threshold,
    build_detector,
    drawn_rows,
    left_out_thresholds,
)
from medimg.evaluation.ood_figures import ood_headline
from medimg.evaluation.ood_fitting import EXTERNAL_MRI, OTHER_CONTRASTS, OTHER_STAINS
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
from medimg.params import OodParams, load_params

WIDTH = 24  # feature dimension of the synthetic detectors
SETTINGS = dict(k_candidates=[3], accept_share=0.95, familiar_share=0.9, domain="a test image",
                reference_size=4096)


def settings(**changed: object) -> OodParams:
    return OodParams(**{**SETTINGS, **changed, "jitter_copies": 1, "outlier_images": 10,
                        "batch_size": 8})


def cloud(seed: int, count: int, centre: float, spread: float = 0.3) -> np.ndarray:
    """Features pointing near the direction of `centre` on the first axis (positive
    values: cosine distance reads directions)."""
    rng = np.random.default_rng(seed)
    features = np.abs(rng.normal(0.0, spread, (count, WIDTH)))
    features[:, 0] += centre
    return features


def elsewhere(seed: int, count: int) -> np.ndarray:
    """Features pointing along the last axis instead: unlike the reference."""
    features = cloud(seed, count, 0.0)
    features[:, -1] += 3.0
    return features


@pytest.fixture(scope="module")
def detector() -> OodDetector:
    return build_detector(cloud(0, 200, 3.0), cloud(1, 100, 3.0),
                          {"scanner": cloud(2, 50, 3.0, 0.6), "stain": cloud(3, 40, 3.0)},
                          3, settings(), seed=0)


def test_the_score_is_the_cosine_distance_to_the_kth_nearest_reference_row() -> None:
    reference, queries = cloud(0, 50, 1.0), np.r_[cloud(5, 10, 1.0), elsewhere(6, 10)]
    built = build_detector(reference, reference[:5], {"val": reference[:5]},
                           4, settings(), seed=0)
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    # The stored reference is float16: compare with its rounding, not with float64.
    unit = unit.astype(np.float16).astype(np.float64)
    distance = 1 - (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    assert built.score(queries) == pytest.approx(np.sort(distance, axis=1)[:, 3], abs=1e-5)
    assert built.score(reference[:3]) == pytest.approx(
        np.sort(1 - (reference[:3] / np.linalg.norm(reference[:3], axis=1, keepdims=True))
                @ unit.T, axis=1)[:, 3], abs=1e-5)


def test_the_threshold_accepts_the_share_asked_of_each_calibration_source_on_average(
        ) -> None:
    sources = {"near": np.linspace(0.0, 1.0, 101), "far": np.linspace(1.0, 3.0, 11)}
    threshold = accepting_threshold(sources, 0.75)
    accepted = [np.mean(values <= threshold) for values in sources.values()]
    assert np.mean(accepted) >= 0.75
    below = threshold - 10 ** -DECIMALS
    assert np.mean([np.mean(values <= below) for values in sources.values()]) < 0.75
    # Each source weighs the same, whatever its size: not the pooled 75% quantile.
    assert threshold != pytest.approx(np.quantile(np.r_[*sources.values()], 0.75))


def test_the_boundaries_are_stored_rounded_and_familiar_is_never_above_the_threshold(
        detector: OodDetector) -> None:
    for value in (detector.threshold, detector.familiar):
        assert value == round(value, DECIMALS)
    assert detector.familiar <= detector.threshold
    tight = build_detector(cloud(0, 200, 3.0), cloud(1, 100, 3.0, 2.0),
                           {"same": cloud(2, 50, 3.0)}, 3, settings(familiar_share=1.0),
                           seed=0)
    assert tight.familiar == tight.threshold
    assert tight.summary["val_familiar"] == tight.summary["val_accepted"]


def test_three_verdicts_from_two_boundaries(detector: OodDetector) -> None:
    scores = np.array([0.0, detector.familiar, detector.familiar + 1e-4, detector.threshold,
                       detector.threshold + 1e-4, 2.0])
    assert detector.verdicts(scores) == ["familiar", "familiar", "unfamiliar", "unfamiliar",
                                         "outside", "outside"]


def test_the_share_scoring_higher_ranks_a_score_among_the_validation_images(
        detector: OodDetector) -> None:
    scores = np.sort(detector.score(cloud(1, 100, 3.0)))
    shares = detector.share_scoring_higher(np.r_[scores[0] - 1, scores[49], scores[-1],
                                                 scores[-1] + 1])
    assert shares.tolist() == [1.0, 0.5, 0.0, 0.0]


def test_a_reloaded_detector_gives_the_same_scores(detector: OodDetector, tmp_path) -> None:
    detector.save(tmp_path)
    again = OodDetector.load(tmp_path)
    features = np.r_[cloud(5, 20, 3.0), elsewhere(6, 20)]
    assert (again.k, again.familiar, again.threshold, again.domain) == (
        detector.k, detector.familiar, detector.threshold, detector.domain)
    assert np.array_equal(again.score(features), detector.score(features))
    assert np.array_equal(again.share_scoring_higher(again.score(features)),
                          detector.share_scoring_higher(detector.score(features)))
    assert again.summary == detector.summary


def test_far_away_features_are_flagged_and_training_like_ones_accepted(
        detector: OodDetector) -> None:
    assert detector.accepts(cloud(7, 100, 3.0)).mean() >= 0.9
    assert detector.accepts(elsewhere(8, 100)).mean() <= 0.05
    assert detector.verdicts(detector.score(elsewhere(8, 5))) == ["outside"] * 5


def test_a_large_reference_is_drawn_down_to_reference_size() -> None:
    built = build_detector(cloud(0, 500, 3.0), cloud(1, 20, 3.0), {"same": cloud(2, 20, 3.0)},
                           3, settings(reference_size=100), seed=4)
    assert built.reference.shape == (100, WIDTH) and built.reference.dtype == np.float16
    assert built.summary["reference_rows"] == 100
    assert built.summary["reference_candidates"] == 500
    again = build_detector(cloud(0, 500, 3.0), cloud(1, 20, 3.0), {"same": cloud(2, 20, 3.0)},
                           3, settings(reference_size=100), seed=4)
    assert np.array_equal(built.reference, again.reference)
    assert np.array_equal(drawn_rows(50, 100, 0), np.arange(50))


def test_a_left_out_calibration_source_gets_a_threshold_set_without_it(
        detector: OodDetector) -> None:
    calibration = {"scanner": cloud(2, 50, 3.0, 0.6), "stain": cloud(3, 40, 3.0),
                   "new": elsewhere(9, 30)}
    found = left_out_thresholds(detector, calibration, 0.95)
    rest = {name: detector.score(values) for name, values in calibration.items()
            if name != "new"}
    assert found["new"]["threshold"] == accepting_threshold(rest, 0.95)
    assert found["new"]["accepted"] < 0.1 and found["new"]["n"] == 30
    assert found["stain"]["accepted"] >= 0.9
    # A source alone has no others to set a threshold on.
    assert left_out_thresholds(detector, {"stain": calibration["stain"]}, 0.95) == {}


# Builds a detector on features made without a matmul (NumPy's own matmul would already
# differ between BLAS kernels) and prints the hash of what it stores and scores.
BUILD = """
import hashlib
import numpy as np
from medimg.evaluation.ood import build_detector
from medimg.params import OodParams
rng = np.random.default_rng(0)
features = np.abs(rng.normal(size=(300, 96))) * np.linspace(0.1, 3.0, 96)
settings = OodParams(k_candidates=[3], accept_share=0.95, familiar_share=0.9, domain="x",
                     reference_size=200, jitter_copies=1, outlier_images=2, batch_size=8)
detector = build_detector(features, features[:50], {"a": features[50:90] * 1.5}, 3, settings,
                          0)
parts = [detector.reference, detector.validation_scores, detector.score(features)]
print(detector.threshold, detector.familiar,
      hashlib.md5(b"".join(part.tobytes() for part in parts)).hexdigest())
"""


@pytest.mark.skipif(not HAS_AVX2, reason="OpenBLAS's Haswell kernels need AVX2")
def test_the_detector_does_not_depend_on_which_blas_kernels_numpy_picked() -> None:
    # NumPy's OpenBLAS chooses its kernels by CPU when it loads, too early for
    # reproducible_cpu to pin; the detector's linear algebra runs in torch (MKL, pinned).
    def built(core: str) -> str:
        env = {**os.environ, "OPENBLAS_CORETYPE": core}
        return subprocess.run([sys.executable, "-c", BUILD], cwd=REPO / "stages", env=env,
                              capture_output=True, text=True, check=True).stdout.strip()

    assert built("Haswell") == built("Prescott")


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


def test_a_grey_image_is_a_scan_and_a_coloured_one_a_slide() -> None:
    grey = np.full((8, 8, 3), 90, dtype=np.uint8)
    assert is_grey(grey)
    grey[0, 0] = (90, 95, 98)  # within GREY_SPREAD: JPEG noise on a scan
    assert is_grey(grey)
    grey[0, 0] = (200, 120, 180)
    assert not is_grey(grey)


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
    ("k_candidates", [0], "ood.k_candidates"),
    ("k_candidates", [], "ood.k_candidates"),
    ("accept_share", 1.5, "ood.accept_share"),
    ("familiar_share", 0, "ood.familiar_share"),
    ("domain", "", "ood.domain"),
    ("reference_size", 0, "ood.reference_size"),
    ("jitter_copies", -1, "ood.jitter_copies"),
    ("outlier_images", 1, "ood.outlier_images"),
    ("accept_shares", 0.9, "unknown key 'ood.accept_shares' (did you mean 'ood.accept_share'?)"),
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
        images = np.stack([picture(start + i, bool(label), 32)
                           for i, label in enumerate(labels)])
        # Class 0 as scans (grey), class 1 as slides (colour): both calibration kinds.
        images[labels == 0] = images[labels == 0].mean(axis=3, keepdims=True).astype(np.uint8)
        np.save(prepared / f"{split}.npy", images)
        pd.DataFrame({"label": labels}).to_csv(prepared / f"{split}.csv", index=False)
    write_params(folder, outlier_images=60, jitter_copies=1)
    return folder


def test_the_stage_stores_a_detector_beside_the_model(stage_folder, monkeypatch) -> None:
    monkeypatch.chdir(stage_folder)
    ood.main()
    detector = OodDetector.load(Path("models"))
    report = yaml.safe_load(Path("metrics/report/ood.json").read_text())
    params = load_params()
    assert report["threshold"] == detector.threshold
    # The k whose threshold flags the most outlier exposure, ties to the smaller.
    flagged = {int(k): share for k, share in report["outliers_flagged_by_k"].items()}
    assert sorted(flagged) == sorted(params.ood.k_candidates)
    assert report["k"] == detector.k == max(flagged, key=lambda k: (flagged[k], -k))
    # The reference: the training split and one jittered copy of each image.
    assert report["reference_rows"] == detector.reference.shape[0] == 40 + 40
    classifier = load_classifier(Path("models"))
    val = classifier.predict_with_features(np.load("data/prepared/val.npy"), 8)[1]
    assert report["val_accepted"] == round(float(detector.accepts(val).mean()), 4)
    # The calibration sources: the packaged MRI (the training split holds scans) and the
    # validation split's jittered copies, each accepted on average as asked.
    accepted = report["calibration_accepted"]
    assert set(accepted) == {EXTERNAL_MRI, OTHER_CONTRASTS, OTHER_STAINS}
    assert np.mean(list(accepted.values())) >= params.ood.accept_share
    assert set(report["left_out_calibration"]) == set(accepted)
    flagged = report["outlier_exposure_flagged"]
    assert sum(row["n"] for row in flagged.values()) == 60
    assert all(0 <= row["flagged_low"] <= row["flagged"] <= row["flagged_high"] <= 1
               for row in flagged.values())

    result = evaluate.out_of_distribution(classifier, detector, val, 16)
    assert {name: figures["n"] for name, figures in result["sets"].items()} == {
        "test": 20, "everyday": len(EVERYDAY_FILES), "other_modalities": 10}
    assert result["curve"][-1]["everyday_accepted"] == 1.0
    assert set(ood_headline(result)) == {"ood_flagged", "ood_test"}
