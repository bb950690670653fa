import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

import predict
from conftest import REPO, save
from export import export_onnx
from medimg.inference import ONNX_NAME, expand_inputs, load_classifier
from medimg.models import create_model, normalisation, save_checkpoint
from medimg.params import load_params
from medimg.training import Trainer, seed_everything
from prepare import write_split

CLASSES = ["grey", "red"]


def picture(seed: int, red: bool, size: int = 40) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(60, 120, (size, size, 3))
    if red:
        pixels[..., 0] += 120
    return pixels.astype(np.uint8)


class Pictures(Dataset):
    def __init__(self, count: int) -> None:
        self.labels = np.arange(count) % 2
        self.images = torch.from_numpy(
            np.stack([picture(i, bool(label), 32) for i, label in enumerate(self.labels)]))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model trained to tell red pictures from grey ones."""
    folder = tmp_path_factory.mktemp("model")
    seed_everything(0)
    model = create_model("test_efficientnet", "none", 2)
    norm = normalisation(model)
    train = load_params(REPO / "params.yaml").train.model_copy(update={
        "epochs": 4, "freeze_epochs": 0, "batch_size": 8, "lr": 1e-2, "device": "cpu"})
    Trainer(model, Pictures(32), Pictures(8), train, seed=0, num_classes=2).fit()
    save_checkpoint(folder, model, {"model": "test_efficientnet", "classes": CLASSES,
                                    "image_size": 32, "resize": "squash", **norm})
    return folder


def mixed_folder(root: Path) -> Path:
    folder = root / "incoming"
    save(folder / "g1.png", picture(100, False))
    save(folder / "r1.png", picture(101, True))
    save(folder / "nested/g2.jpg", picture(102, False), quality=95)
    save(folder / "nested/r2.webp", picture(103, True), lossless=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture")
    full = save(root / "full.jpg", picture(104, True, size=300), quality=90)
    (folder / "cut.jpg").write_bytes(full.read_bytes()[:200])
    return folder


def test_folder_with_good_and_broken_files(model_dir, tmp_path) -> None:
    folder = mixed_folder(tmp_path)
    out = tmp_path / "predictions.csv"
    status = predict.main([str(folder), str(tmp_path / "missing.png"), "--model", str(model_dir),
                           "--out", str(out)])
    assert status == 0
    table = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert list(table.columns) == ["predicted", "prob_grey", "prob_red", "error"]
    expected = {"g1.png": "grey", "r1.png": "red", "nested/g2.jpg": "grey",
                "nested/r2.webp": "red"}
    for name, label in expected.items():
        row = table.loc[str(folder / name)]
        assert row["predicted"] == label and row["error"] == ""
        assert float(row["prob_grey"]) + float(row["prob_red"]) == pytest.approx(1.0, abs=1e-5)
    assert table.loc[str(folder / "empty.png"), "error"] == "empty file"
    assert table.loc[str(folder / "notes.jpg"), "error"] == "not a recognised image"
    assert table.loc[str(folder / "cut.jpg"), "error"].startswith("unreadable image")
    assert table.loc[str(tmp_path / "missing.png"), "error"] == "no such file or folder"
    assert (table.loc[[str(folder / "empty.png")], "predicted"] == "").all()


def test_evaluate_and_predict_give_the_same_probabilities_for_the_same_files(model_dir,
                                                                            tmp_path) -> None:
    folder = mixed_folder(tmp_path)
    files = [folder / name for name in ("g1.png", "r1.png", "nested/g2.jpg", "nested/r2.webp")]
    # evaluate's way: the prepare stage's array of the split, scored in evaluate's batches.
    write_split(tmp_path / "test.npy", files, 32, "squash", workers=1)
    batch_size = load_params(REPO / "params.yaml").evaluate.batch_size
    evaluated = load_classifier(model_dir).predict(np.load(tmp_path / "test.npy", mmap_mode="r"),
                                                   batch_size)
    out = tmp_path / "predicted.csv"
    assert predict.main([*map(str, files), "--model", str(model_dir), "--batch-size", "3",
                         "--out", str(out)]) == 0
    predicted = pd.read_csv(out)[["prob_grey", "prob_red"]].to_numpy()
    assert np.abs(predicted - evaluated).max() <= 1e-6  # predict rounds to 6 decimals
    assert evaluated[:, 1].round().tolist() == [0, 1, 0, 1]


def test_exit_status_is_non_zero_only_when_nothing_was_classified(model_dir, tmp_path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    assert predict.main([str(broken), "--model", str(model_dir),
                         "--out", str(tmp_path / "a.csv")]) == 1
    good = save(tmp_path / "good.png", picture(1, True))
    assert predict.main([str(broken), str(good), "--model", str(model_dir),
                         "--out", str(tmp_path / "b.csv")]) == 0


def test_json_output_globs_and_gradcam(model_dir, tmp_path) -> None:
    for index in range(3):
        save(tmp_path / "glob" / f"r{index}.png", picture(200 + index, True))
    out = tmp_path / "out.json"
    status = predict.main([str(tmp_path / "glob" / "*.png"), "--model", str(model_dir),
                           "--out", str(out), "--gradcam", str(tmp_path / "cams")])
    records = json.loads(out.read_text())
    assert status == 0 and len(records) == 3
    assert {r["predicted"] for r in records} == {"red"}
    assert "\\/" not in out.read_text()  # paths as written, not "a\/b.png"
    assert records[0]["path"] == str(tmp_path / "glob" / "r0.png")
    assert len(list((tmp_path / "cams").glob("*.png"))) == 3


def test_onnx_backend_matches_torch(model_dir, tmp_path) -> None:
    export_onnx(load_classifier(model_dir), model_dir / ONNX_NAME, opset=18)
    folder = mixed_folder(tmp_path)
    results = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.csv"
        assert predict.main([str(folder), "--model", str(model_dir), "--backend", backend,
                             "--out", str(out)]) == 0
        results[backend] = pd.read_csv(out, keep_default_na=False)
    assert (results["torch"]["predicted"] == results["onnx"]["predicted"]).all()
    good = results["torch"]["error"] == ""
    for column in ("prob_grey", "prob_red"):
        difference = (results["torch"].loc[good, column].astype(float)
                      - results["onnx"].loc[good, column].astype(float)).abs()
        assert difference.max() <= 1e-4


def test_inputs_expand_and_report_what_matched_nothing(tmp_path) -> None:
    save(tmp_path / "a/x.png", picture(1, False))
    (tmp_path / "a/readme.txt").write_text("skip me")
    (tmp_path / "empty").mkdir()
    found = list(expand_inputs([str(tmp_path / "a"), str(tmp_path / "empty"),
                                str(tmp_path / "*.nothing")]))
    assert found == [(str(tmp_path / "a/x.png"), None),
                     (str(tmp_path / "empty"), "folder holds no image files"),
                     (str(tmp_path / "*.nothing"), "pattern matches no file")]
