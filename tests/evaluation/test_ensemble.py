"""Ensembles: the mean of several models' probabilities (and of flipped views), loaded and
used like one model, and scored against the best member with a paired interval."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, save
from medimg.errors import ModelError, UserError
from medimg.evaluation.metrics import accuracy
from medimg.evaluation.scores import paired_difference_interval
from medimg.inference import Ensemble, load_classifier
from medimg.serving import predict
from medimg.training.models import ModelConfig, create_model, normalisation, save_checkpoint
from scripts import ensemble as ensemble_script

CLASSES = ["grey", "red"]


def member(folder: Path, seed: int, image_size: int = 32) -> Path:
    """An untrained tiny model: members with other seeds give other probabilities."""
    torch.manual_seed(seed)
    model = create_model("test_efficientnet", "none", 2)
    save_checkpoint(folder, model, ModelConfig(
        model="test_efficientnet", classes=CLASSES, image_size=image_size, resize="squash",
        decode={"max_pixels": 10**6, "min_side": 16}, **normalisation(model)))
    return folder


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def test_ensemble_is_the_mean_of_its_members_and_of_their_flipped_views(tmp_path) -> None:
    members = [load_classifier(member(tmp_path / f"m{i}", i)) for i in range(3)]
    batch = images(6)
    each = [m.predict(batch, 4) for m in members]
    assert not np.allclose(each[0], each[1])
    assert np.allclose(Ensemble(members).predict(batch, 4), np.mean(each, axis=0))
    views = [batch, batch[:, :, ::-1], batch[:, ::-1]]
    flipped = np.mean([m.predict(np.ascontiguousarray(v), 4) for m in members for v in views],
                      axis=0)
    assert np.allclose(Ensemble(members, tta=True).predict(batch, 4), flipped)
    assert np.allclose(flipped.sum(axis=1), 1.0)


def test_members_must_share_classes_and_decoding(tmp_path) -> None:
    small, large = member(tmp_path / "a", 0, 32), member(tmp_path / "b", 1, 64)
    with pytest.raises(ModelError, match="members differ in 'image_size': \\[32, 64\\]"):
        Ensemble([load_classifier(small), load_classifier(large)])


def test_paired_difference_counts_only_the_images_where_the_models_differ() -> None:
    labels = np.arange(200) % 2
    first = labels.copy()
    first[:40] = 1 - first[:40]  # 40 mistakes
    second = first.copy()
    second[:20] = labels[:20]  # fixes 20 of them, breaks nothing
    value, (low, high) = paired_difference_interval(labels, first, second, accuracy, 2000, 0)
    assert value == pytest.approx(0.1)
    assert 0.0 < low <= 0.1 <= high  # every resample favours the second model or ties
    same, (low, high) = paired_difference_interval(labels, first, first, accuracy, 200, 0)
    assert same == low == high == 0.0


def project(tmp_path: Path, copies: int = 0) -> Path:
    """A folder with params.yaml and a prepared test split of 24 images, the first
    `copies` of them marked as the test folder's own copies (dedup.keep_test_copies)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["classes"] = CLASSES
    params["evaluate"]["bootstrap_resamples"] = 50
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = tmp_path / "data/prepared"
    prepared.mkdir(parents=True)
    np.save(prepared / "test.npy", images(24, 5))
    table = pd.DataFrame({"path": [f"t{i}.png" for i in range(24)], "label": np.arange(24) % 2})
    if copies:
        table["test_copy"] = ["exact"] * copies + [""] * (24 - copies)
    table.to_csv(prepared / "test.csv", index=False)
    return tmp_path


def test_marked_test_copies_are_scored_apart_as_well(tmp_path, monkeypatch) -> None:
    root = project(tmp_path, copies=6)
    folders = [member(tmp_path / f"trained{i}", i) for i in range(2)]
    monkeypatch.chdir(root)
    out = root / "scores.json"
    argv = ["models/ensemble", *(a for f in folders for a in ("--model", str(f))), "--out",
            str(out)]
    assert ensemble_script.main(argv) == 0
    scores = json.loads(out.read_text())
    unique = scores["without_test_copies"]
    assert scores["test_images"] == 24 and unique["test_images"] == 18
    probs = load_classifier(root / "models/ensemble").predict(images(24, 5), 8)
    labels = np.arange(24) % 2
    assert unique["ensemble"]["acc"] == pytest.approx(
        float((probs[6:].argmax(1) == labels[6:]).mean()), abs=1e-4)
    assert "ensemble_tta" not in unique


def test_script_builds_a_folder_predict_uses_and_scores_members_and_ensemble(
        tmp_path, monkeypatch, capsys) -> None:
    root = project(tmp_path)
    folders = [member(tmp_path / f"trained{i}", i) for i in range(3)]
    monkeypatch.chdir(root)
    out = root / "scores.json"
    members = [arg for folder in folders for arg in ("--model", str(folder))]
    argv = ["models/ensemble", *members, "--tta", "--out", str(out)]
    assert ensemble_script.main(argv) == 0
    spec = json.loads((root / "models/ensemble/ensemble.json").read_text())
    assert spec["members"] == ["member0", "member1", "member2"] and spec["tta"]
    scores = json.loads(out.read_text())
    assert scores["test_images"] == 24 and len(scores["members"]) == 3
    best = max(m["acc"] for m in scores["members"])
    difference = scores["ensemble"]["minus_best_member"]["acc"]
    assert difference["value"] == pytest.approx(scores["ensemble"]["acc"] - best, abs=1e-4)
    assert difference["low"] <= difference["value"] <= difference["high"]
    assert "ensemble_tta" in scores and "ensemble minus best member" in capsys.readouterr().out
    picture = save(root / "new/x.png", images(1, 9)[0])
    assert predict.main([str(picture), "--model", "models/ensemble",
                         "--out", "p.csv"]) == 0
    row = pd.read_csv(root / "p.csv").iloc[0]
    expected = load_classifier(root / "models/ensemble").predict(images(1, 9), 1)[0]
    assert row["prob_red"] == pytest.approx(expected[1], abs=1e-6)
    with pytest.raises(UserError, match="is an ensemble; Grad-CAM explains one model"):
        predict.main([str(picture), "--model", "models/ensemble", "--gradcam", "cams"])


def test_script_needs_two_members_and_leaves_no_folder_on_failure(tmp_path,
                                                                   monkeypatch) -> None:
    root = project(tmp_path)
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit, match="at least two members"):
        ensemble_script.main(["out", "--model", str(member(tmp_path / "one", 0))])
    broken = member(tmp_path / "two", 1)
    shutil.rmtree(tmp_path / "two")
    broken.mkdir()
    with pytest.raises(FileNotFoundError):
        ensemble_script.main(["out", "--model", str(tmp_path / "one"), "--model", str(broken)])
    assert not (root / "out").exists()
