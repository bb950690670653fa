import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import picture, save
from medimg.errors import ModelError
from medimg.inference import ONNX_NAME, expand_inputs, export_onnx, load_classifier
from medimg.serving import predict
from medimg.serving.predictor import Predictor


@pytest.fixture
def model_dir(tiny_model, tmp_path) -> Path:
    """A copy of the tiny model, so that exporting into it leaves the shared one alone."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


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
    assert list(table.columns) == ["frame", "predicted", "prob_grey", "prob_red",
                                   "in_distribution", "ood_verdict", "ood_score",
                                   "validation_scoring_higher",
                                   "error"]
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


def test_a_folder_is_decoded_and_classified_a_batch_at_a_time(model_dir, tmp_path,
                                                              monkeypatch) -> None:
    for index in range(7):
        save(tmp_path / "in" / f"{index}.png", picture(300 + index, bool(index % 2)))
    events: list[str | int] = []
    decode, classify = Predictor.decode, Predictor.predict
    monkeypatch.setattr(Predictor, "decode", lambda self, source, name: (
        events.append("decode") or decode(self, source, name)))
    monkeypatch.setattr(Predictor, "predict", lambda self, images: (
        events.append(len(images)) or classify(self, images)))
    assert predict.main([str(tmp_path / "in"), "--model", str(model_dir), "--batch-size", "3",
                         "--out", str(tmp_path / "out.csv")]) == 0
    # Never more than a batch of decoded images waits: a folder of any size streams.
    assert events == ["decode"] * 3 + [3] + ["decode"] * 3 + [3] + ["decode", 1]
    assert len(pd.read_csv(tmp_path / "out.csv")) == 7


def test_a_folder_without_a_model_is_a_one_line_error(tmp_path) -> None:
    save(tmp_path / "x.png", picture(1, True))
    with pytest.raises(ModelError, match=f"--model {tmp_path}: no model.json"):
        predict.main([str(tmp_path / "x.png"), "--model", str(tmp_path)])


def test_medimg_help_goes_to_standard_output_and_errors_to_standard_error(capsys) -> None:
    from medimg.cli import dispatch

    assert dispatch(["--help"]) == 0
    shown = capsys.readouterr()
    assert "medimg predict PATH" in shown.out and shown.err == ""
    assert dispatch(["nonsense"]) == 2
    shown = capsys.readouterr()
    assert "medimg predict PATH" in shown.err and shown.out == ""
