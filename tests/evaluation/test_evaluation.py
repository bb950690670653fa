import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medimg.evaluation.gradcam import grad_cam, overlay
from medimg.evaluation.plots import confusion_figure
from medimg.evaluation.scores import (
    bootstrap_interval,
    difference_interval,
    error_analysis,
    expected_calibration_error,
    full_metrics,
    image_statistics,
    shortcut_scores,
    wilson_interval,
)
from medimg.training.models import create_model


def planted(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    positive = np.clip(labels * 0.5 + rng.normal(0.25, 0.25, n), 0.001, 0.999)
    return labels, np.column_stack([1 - positive, positive])


def test_metrics_equal_scikit_learn_on_planted_predictions() -> None:
    labels, probs = planted()
    predicted = probs.argmax(axis=1)
    result = full_metrics(labels, probs, ["neg", "pos"], resamples=200, seed=0)
    assert 0 < result["errors"] < 300
    assert result["accuracy"] == pytest.approx((predicted == labels).mean())
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert result["f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert result["f1_weighted"] == pytest.approx(f1_score(labels, predicted, average="weighted"))
    assert result["precision_macro"] == pytest.approx(
        precision_score(labels, predicted, average="macro"))
    assert result["sensitivity"] == pytest.approx(recall_score(labels, predicted))
    assert result["specificity"] == pytest.approx(recall_score(1 - labels, 1 - predicted))
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert result["average_precision"] == pytest.approx(
        average_precision_score(labels, probs[:, 1]))
    assert result["mcc"] == pytest.approx(matthews_corrcoef(labels, predicted))
    assert result["brier"] == pytest.approx(brier_score_loss(labels, probs[:, 1]))
    assert result["log_loss"] == pytest.approx(log_loss(labels, probs))
    assert result["per_class"]["pos"]["recall"] == pytest.approx(result["sensitivity"])
    for name in ("accuracy", "f1_macro", "roc_auc", "sensitivity"):
        assert result[f"{name}_low"] <= result[name] <= result[f"{name}_high"]


def test_multiclass_metrics() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    logits = rng.normal(0, 1, (200, 4)) + np.eye(4)[labels] * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = full_metrics(labels, probs, list("abcd"), resamples=100, seed=0)
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert "sensitivity" not in result
    assert set(result["per_class"]) == set("abcd")


def test_wilson_bounds_match_known_values() -> None:
    low, high = wilson_interval(5, 20)
    assert (round(low, 4), round(high, 4)) == (0.1119, 0.4687)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775


def test_zero_errors_still_have_a_lower_bound() -> None:
    low, high = wilson_interval(1955, 1955)
    assert high == 1.0
    assert low == pytest.approx(0.99804, abs=1e-5)  # "100%" on 1,955 images is >= 99.8%
    labels = np.array([0, 1] * 50)
    result = full_metrics(labels, np.eye(2)[labels], ["a", "b"], resamples=50, seed=0)
    assert result["accuracy"] == 1.0 and result["accuracy_low"] == pytest.approx(
        wilson_interval(100, 100)[0], abs=1e-6)


def test_bootstrap_keeps_class_counts_and_brackets_the_value() -> None:
    labels, probs = planted(seed=3)
    seen = []

    def count_positive(sample_labels: np.ndarray, sample_probs: np.ndarray) -> float:
        seen.append(int(sample_labels.sum()))
        return float(roc_auc_score(sample_labels, sample_probs[:, 1]))

    low, high = bootstrap_interval(labels, probs, count_positive, resamples=100, seed=0)
    assert set(seen) == {int(labels.sum())}
    assert low < roc_auc_score(labels, probs[:, 1]) < high


def test_difference_interval_matches_the_normal_approximation() -> None:
    def planted(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.random.default_rng(seed).integers(0, 2, n)
        wrong = np.arange(n) < round(n * (1 - accuracy))
        return labels, np.where(wrong, 1 - labels, labels)

    def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
        return float((labels == predicted).mean())

    first, second = planted(500, 0.9, 0), planted(400, 0.8, 1)
    value, (low, high) = difference_interval(first, second, accuracy, 4000, seed=0)
    assert value == pytest.approx(-0.1)
    half = 1.959964 * np.sqrt(0.9 * 0.1 / 500 + 0.8 * 0.2 / 400)  # Wald, independent sets
    assert low == pytest.approx(-0.1 - half, abs=0.006)
    assert high == pytest.approx(-0.1 + half, abs=0.006)
    same, (low, high) = difference_interval(first, first, accuracy, 1000, seed=0)
    assert same == 0.0 and low < 0.0 < high


def test_expected_calibration_error() -> None:
    labels = np.array([1] * 8 + [0] * 2)
    confident = np.tile([0.2, 0.8], (10, 1))
    assert expected_calibration_error(labels, confident) == pytest.approx(0.0)
    overconfident = np.tile([0.0, 1.0], (10, 1))
    assert expected_calibration_error(labels, overconfident) == pytest.approx(0.2)


def test_error_analysis_lists_exactly_the_planted_mistakes() -> None:
    predictions = pd.DataFrame({
        "path": [f"img{i}.png" for i in range(8)],
        "class": ["a", "a", "a", "b", "b", "b", "b", "a"],
        "predicted": ["a", "b", "a", "b", "a", "b", "b", "a"],
        "true_class_probability": [0.9, 0.3, 0.6, 0.99, 0.4, 0.7, 0.55, 0.95]})
    table = error_analysis(predictions, least_confident=2)
    assert table[table["kind"] == "error"]["path"].tolist() == ["img1.png", "img4.png"]
    assert table[table["kind"] == "least_confident"]["path"].tolist() == ["img6.png",
                                                                           "img2.png"]


def test_shortcut_check_detects_a_planted_colour_shortcut() -> None:
    rng = np.random.default_rng(0)

    def images(labels: np.ndarray, shortcut: bool) -> np.ndarray:
        pixels = rng.integers(0, 200, (len(labels), 16, 16, 3)).astype(np.uint8)
        if shortcut:
            pixels[labels == 1, ..., 0] += 50  # class 1 is redder
        return pixels

    train_labels, test_labels = np.arange(200) % 2, np.arange(100) % 2
    for shortcut, expected in ((True, 0.99), (False, None)):
        scores = shortcut_scores(image_statistics(images(train_labels, shortcut)), train_labels,
                                 image_statistics(images(test_labels, shortcut)), test_labels)
        if expected:
            assert scores["accuracy"] >= expected
        else:
            assert scores["accuracy"] < 0.75


def test_grad_cam_gives_a_normalised_map_and_overlay() -> None:
    torch.manual_seed(0)
    model = create_model("test_efficientnet", "none", 2)
    cam = grad_cam(model, torch.randn(3, 48, 48), target=1)
    assert cam.shape == (48, 48) and cam.min() >= 0.0 and cam.max() <= 1.0
    blended = overlay(np.zeros((48, 48, 3), dtype=np.uint8), cam)
    assert blended.shape == (48, 48, 3) and blended.dtype == np.uint8


def test_confusion_matrix_names_do_not_overlap_with_long_class_names() -> None:
    classes = ["glioma_tumour_left_hemisphere", "meningioma_tumour_convexity",
               "no_tumour_found_on_review", "pituitary_adenoma_macro"]
    labels = np.arange(40) % 4
    probs = np.eye(4)[(labels + (np.arange(40) % 5 == 0)) % 4]
    figure = confusion_figure(labels, probs, classes)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for axis in figure.axes:
        for ticks in (axis.get_xticklabels(), axis.get_yticklabels()):
            boxes = [label.get_window_extent(renderer) for label in ticks]
            assert len(boxes) == 4
            for index, box in enumerate(boxes):
                assert not any(box.overlaps(other) for other in boxes[index + 1:])
    plt.close(figure)
