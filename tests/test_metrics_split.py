import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from medimg.metrics import classification_metrics
from medimg.splitting import assign_splits


def test_metrics_equal_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    positive = np.clip(labels * 0.6 + rng.normal(0.2, 0.25, 200), 0, 1)
    probs = np.stack([1 - positive, positive], axis=1)
    result = classification_metrics(labels, probs)
    assert result["n"] == 200
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))
    assert result["f1_macro"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, positive))
    assert result["accuracy"] < 1.0


def test_auc_is_missing_when_one_class_is_present() -> None:
    result = classification_metrics(np.zeros(3, dtype=int), np.array([[0.9, 0.1]] * 3))
    assert result["roc_auc"] is None and result["accuracy"] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_keeps_groups_whole_and_follows_fractions(seed) -> None:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(120), rng.integers(1, 8, 120))
    labels = (groups % 3 == 0).astype(int)  # a group has one class, as slabs and regions do
    split = assign_splits(labels, groups, val=0.15, test=0.15, seed=seed)
    for group in np.unique(groups):
        assert len(set(split[groups == group])) == 1
    shares = {name: np.mean(split == name) for name in ("train", "val", "test")}
    assert shares["train"] == pytest.approx(0.70, abs=0.06)
    assert shares["test"] == pytest.approx(0.15, abs=0.04)
    for name in ("val", "test"):
        assert labels[split == name].mean() == pytest.approx(labels.mean(), abs=0.08)


def test_split_is_deterministic_and_refuses_too_few_groups() -> None:
    groups = np.arange(40) // 2
    labels = groups % 2
    first = assign_splits(labels, groups, 0.15, 0.15, seed=7)
    assert (first == assign_splits(labels, groups, 0.15, 0.15, seed=7)).all()
    with pytest.raises(ValueError, match="groups cannot be split"):
        assign_splits(labels[:6], groups[:6], 0.15, 0.15, seed=7)
