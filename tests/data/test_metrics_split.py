import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from medimg.data.prepared import resize_square
from medimg.data.splitting import (
    allocate_groups,
    assign_splits,
    check_class_counts,
    closest_pairs,
    leakage,
)
from medimg.errors import SplitError
from medimg.evaluation.metrics import classification_metrics


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


def catalog(labels: np.ndarray, groups: np.ndarray, origin: str = "") -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({"path": [f"img{i:05d}.png" for i in range(n)], "label": labels,
                         "class": np.where(labels == 1, "b", "a"), "group": groups.astype(str),
                         "origin": origin, "sha256": [f"s{i}" for i in range(n)],
                         "pixel_sha256": [f"p{i}" for i in range(n)],
                         "phash": [f"{(i * 0x9E3779B97F4A7C15) % 2**64:016x}" for i in range(n)]})


group_structures = st.lists(
    st.tuples(st.integers(1, 6), st.integers(0, 2)), min_size=20, max_size=150)


@settings(max_examples=60, deadline=None)
@given(structure=group_structures, seed=st.integers(0, 10_000),
       test=st.sampled_from([0.1, 0.15, 0.2, 0.3]), val=st.sampled_from([0.1, 0.15, 0.2]))
def test_split_properties(structure, seed, test, val) -> None:
    sizes = np.array([size for size, _ in structure])
    groups = np.repeat(np.arange(len(structure)), sizes)
    labels = np.repeat([label for _, label in structure], sizes)  # a group has one class
    split = assign_splits(catalog(labels, groups), val, test, seed)
    for group in np.unique(groups):
        assert len(set(split[groups == group])) == 1
    # Greedy allocation misses each wanted per-class count by at most one group.
    largest = sizes.max()
    for name, share in (("test", test), ("val", val)):
        for label in np.unique(labels):
            wanted = share * (labels == label).sum()
            assert abs(((split == name) & (labels == label)).sum() - wanted) <= largest + 1


def test_class_shares_within_two_points_when_groups_are_small() -> None:
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(1500), rng.integers(1, 4, 1500))
    labels = (rng.random(1500) < 0.25).astype(int)[groups]
    split = assign_splits(catalog(labels, groups), 0.15, 0.15, seed=4)
    overall = labels.mean()
    for name, share in (("train", 0.70), ("val", 0.15), ("test", 0.15)):
        assert np.mean(split == name) == pytest.approx(share, abs=0.02)
        assert labels[split == name].mean() == pytest.approx(overall, abs=0.02)


@settings(max_examples=30, deadline=None)
@given(structure=group_structures, seed=st.integers(0, 10_000), folds=st.integers(2, 6))
def test_folds_partition_the_non_test_data(structure, seed, folds) -> None:
    sizes = np.array([size for size, _ in structure])
    groups = np.repeat(np.arange(len(structure)), sizes)
    labels = np.repeat([label for _, label in structure], sizes)
    table = catalog(labels, groups)
    runs = [assign_splits(table, 0.15, 0.15, seed, folds=folds, fold=k) for k in range(folds)]
    test = runs[0] == "test"
    for run in runs:
        assert ((run == "test") == test).all()  # the test set stays fixed
    val_count = np.sum([run == "val" for run in runs], axis=0)
    assert (val_count[~test] == 1).all() and (val_count[test] == 0).all()


def test_allocation_is_seeded_and_named() -> None:
    labels = np.arange(60) % 2
    groups = np.arange(60) // 3
    first = allocate_groups(labels, groups, {"a": 0.5, "b": 0.5}, seed=1)
    assert (first == allocate_groups(labels, groups, {"a": 0.5, "b": 0.5}, seed=1)).all()
    assert set(first) == {"a", "b"}


def test_respect_existing_keeps_the_test_folder_and_excludes_its_groups() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1] * 5)
    groups = np.arange(40) // 2
    table = catalog(labels, groups)
    table["origin"] = np.where(np.arange(40) % 8 == 0, "Testing", "Training")
    split = assign_splits(table, 0.15, 0.15, seed=0, respect_existing="Testing")
    assert (split[table["origin"] == "Testing"] == "test").all()
    partners = (table["origin"] == "Training") & np.isin(groups, groups[np.arange(40) % 8 == 0])
    assert (split[partners] == "excluded").all()
    assert set(split[~partners & (table["origin"] == "Training")]) == {"train", "val"}
    with pytest.raises(SplitError, match="no image has origin 'Test'"):
        assign_splits(table, 0.15, 0.15, seed=0, respect_existing="Test")


def test_planted_leaks_are_found_and_named() -> None:
    labels = np.array([0, 1] * 10)
    table = catalog(labels, np.arange(20))
    table["split"] = ["train"] * 14 + ["val"] * 3 + ["test"] * 3
    rng = np.random.default_rng(0)
    thumbs = rng.integers(0, 256, (20, 64, 64), dtype=np.uint8)
    clean, none = leakage(table, thumbs, 8, 0.985)
    assert clean == {"group": 0, "patient": 0, "series": 0, "sha256": 0, "pixel_sha256": 0,
                     "near_duplicate": 0}
    assert none.empty
    table.loc[19, "group"] = table.loc[0, "group"]  # a group in train and test
    table.loc[18, "sha256"] = table.loc[1, "sha256"]  # the same file in train and test
    table.loc[17, "phash"] = table.loc[2, "phash"]  # a near copy in train and test
    thumbs[17] = np.clip(thumbs[2].astype(int) + 3, 0, 255)
    overlap, offenders = leakage(table, thumbs, 8, 0.985)
    assert overlap == {"group": 1, "patient": 0, "series": 0, "sha256": 1, "pixel_sha256": 0,
                       "near_duplicate": 1}
    pairs = {(row.kind, row.a, row.b) for row in offenders.itertuples()}
    assert pairs == {("group", "img00000.png", "img00019.png"),
                     ("sha256", "img00001.png", "img00018.png"),
                     ("near_duplicate", "img00002.png", "img00017.png")}


def test_closest_pairs_cross_splits_only() -> None:
    table = catalog(np.array([0, 0, 1, 1]), np.arange(4))
    table["phash"] = ["0" * 16, "0" * 15 + "1", "f" * 16, "f" * 15 + "e"]
    table["split"] = ["train", "test", "train", "train"]
    thumbs = np.random.default_rng(1).integers(0, 256, (4, 64, 64), dtype=np.uint8)
    pairs = closest_pairs(table, thumbs, count=5)
    assert pairs[["a", "b", "phash_distance"]].values.tolist() == [
        ["img00000.png", "img00001.png", 1]]


@pytest.mark.parametrize(("policy", "corner"), [("squash", 200), ("pad", 0), ("crop", 200)])
def test_resize_policies(policy, corner) -> None:
    wide = np.full((40, 80, 3), 200, dtype=np.uint8)
    out = resize_square(wide, 32, policy)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert int(out[0, 0, 0]) == corner


def three_class_table(counts: dict[str, int], groups_per_class: dict[str, int]) -> pd.DataFrame:
    rows = [{"class": name, "group": f"{name}{index % groups_per_class.get(name, count)}"}
            for name, count in counts.items() for index in range(count)]
    table = pd.DataFrame(rows)
    table["label"] = table["class"].map({name: i for i, name in enumerate(counts)})
    return table


@pytest.mark.parametrize(("counts", "groups", "stated"), [
    ({"a": 40, "b": 40, "c": 2}, {}, "class 'c' has 2 images in 2 groups"),
    ({"a": 40, "b": 40, "c": 30}, {"c": 2}, "class 'c' has 30 images in 2 groups"),
])
def test_a_class_that_cannot_fill_every_split_stops_the_split(counts, groups, stated) -> None:
    table = three_class_table(counts, groups)
    table["split"] = assign_splits(table, 0.15, 0.15, seed=0)
    with pytest.raises(SplitError) as caught:
        check_class_counts(table, list(counts), 1)
    message = str(caught.value)
    assert stated in message and "split.min_per_split" in message and "\n" not in message
    assert "val 0" in message or "test 0" in message


def test_classes_with_enough_images_pass_and_the_minimum_is_configurable() -> None:
    table = three_class_table({"a": 40, "b": 40, "c": 20}, {})
    table["split"] = assign_splits(table, 0.15, 0.15, seed=0)
    check_class_counts(table, ["a", "b", "c"], 3)
    with pytest.raises(SplitError, match="class 'c'"):
        check_class_counts(table, ["a", "b", "c"], 4)
