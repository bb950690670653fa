"""The train-vs-test shift report on splits with a planted shift, and on one without."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import TINY_CLASSES, picture
from medimg.evaluation.shift import (
    ShiftReport,
    headline,
    jpeg_quality,
    ks_statistic,
    total_variation,
)
from medimg.params import ShiftParams

SETTINGS = ShiftParams(permutations=200, folds=5, resamples=200, sheet=4)
COUNTS = {"train": 120, "val": 40, "test": 40}
SIZE = 32


def split(name: str, start: int, count: int, side: int = 512) -> tuple[pd.DataFrame, np.ndarray]:
    labels = np.arange(count) % 2
    frame = pd.DataFrame({"path": [f"{name}/{i}.png" for i in range(count)],
                          "class": np.asarray(TINY_CLASSES)[labels], "label": labels,
                          "group": [f"{name}{i // 2}" for i in range(count)],
                          "width": side, "height": side, "format": "PNG"})
    pixels = np.stack([picture(start + i, bool(label), SIZE) for i, label in enumerate(labels)])
    return frame, pixels


def pixel_features(pixels: np.ndarray) -> np.ndarray:
    """Stand-ins for the network's features: each channel's mean and spread."""
    values = pixels.astype(np.float64)
    return np.column_stack([values.mean(axis=(1, 2)), values.std(axis=(1, 2))])


def report_of(test_change=None) -> dict:
    """The report on three splits drawn alike, with TEST_CHANGE(frame, pixels) applied to
    the test split."""
    parts, arrays = {}, {}
    for start, (name, count) in zip((0, 1000, 2000), COUNTS.items(), strict=True):
        parts[name], arrays[name] = split(name, start, count)
    if test_change is not None:
        test_change(parts["test"], arrays["test"])
    features = {name: pixel_features(pixels) for name, pixels in arrays.items()}
    shift = ShiftReport(parts, arrays, features, Path("."), SETTINGS, seed=0)
    recall = {"val": dict.fromkeys(TINY_CLASSES, 1.0), "test": dict.fromkeys(TINY_CLASSES, 0.9)}
    return shift.report(TINY_CLASSES, recall, parts["test"]["label"].to_numpy())


def darken_red(frame: pd.DataFrame, pixels: np.ndarray) -> None:
    pixels[frame["label"].to_numpy() == 1] //= 2


def shrink_grey(frame: pd.DataFrame, pixels: np.ndarray) -> None:
    grey = frame["label"] == 0
    frame.loc[grey, ["width", "height"]] = 224


@pytest.fixture(scope="module")
def unshifted() -> dict:
    return report_of()


def test_a_test_class_made_darker_is_found_in_that_class_only() -> None:
    report = report_of(darken_red)
    red, grey = report["per_class"]["red"]["test"], report["per_class"]["grey"]["test"]
    assert red["properties"]["mean"]["p_value"] < 0.01
    assert red["domain_auc_properties"]["low"] > 0.9
    assert red["domain_auc_features"]["low"] > 0.9
    assert grey["properties"]["mean"]["p_value"] > 0.05
    assert grey["domain_auc_features"]["low"] < 0.5
    assert report["per_class"]["red"]["val"]["domain_auc_features"]["low"] < 0.5
    assert headline(report) == {
        "shift_auc": report["overall"]["test"]["domain_auc_features"]["auc"]}


def test_a_test_class_stored_smaller_is_found_in_its_size() -> None:
    report = report_of(shrink_grey)
    grey, red = report["per_class"]["grey"]["test"], report["per_class"]["red"]["test"]
    assert grey["properties"]["width"]["statistic"] == 1.0
    assert grey["properties"]["width"]["p_value"] == pytest.approx(1 / 201, abs=1e-3)
    assert grey["domain_auc_properties"]["low"] > 0.9
    assert red["properties"]["width"]["statistic"] == 0.0


def test_an_unshifted_test_split_is_indistinguishable_from_training(unshifted: dict) -> None:
    for row in (unshifted["overall"]["test"], *(c["test"] for c in
                                                  unshifted["per_class"].values())):
        for kind in ("domain_auc_features", "domain_auc_properties"):
            assert row[kind]["low"] < 0.5, kind  # no evidence that they can be told apart
        assert row["properties"]["mean"]["p_value"] > 0.01


def test_the_report_ties_each_class_to_its_recall_drop_and_lists_the_most_unlike(
        unshifted: dict) -> None:
    assert unshifted["per_class"]["grey"]["recall"] == {"val": 1.0, "test": 0.9, "drop": 0.1}
    assert unshifted["proportions"]["test"] == {"grey": 0.5, "red": 0.5}
    unlike = unshifted["most_unlike"]
    assert len(unlike) == SETTINGS.sheet
    assert [row["distance"] for row in unlike] == sorted((row["distance"] for row in unlike),
                                                         reverse=True)


def test_drift_statistics() -> None:
    assert ks_statistic(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert ks_statistic(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0
    assert total_variation(np.array(["PNG", "PNG"]), np.array(["PNG", "JPEG"])) == 0.5


def test_jpeg_quality_is_read_from_the_quantisation_table(tmp_path) -> None:
    image = Image.fromarray(picture(0, True, 64))
    for quality in (30, 75, 95):
        image.save(tmp_path / f"q{quality}.jpg", quality=quality)
        assert abs(jpeg_quality(tmp_path / f"q{quality}.jpg") - quality) <= 2
    image.save(tmp_path / "lossless.png")
    assert np.isnan(jpeg_quality(tmp_path / "lossless.png"))
