"""The real-data driver (benchmarks/real/run.py) on miniature copies of the two datasets'
layouts; the real datasets themselves are never needed here."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.real import run as driver
from conftest import REPO, noise_image, save
from medimg.params import load_params

DRIVER = REPO / "benchmarks/real/run.py"


def fake_datasets(root: Path, patients: int = 6, patches: int = 6) -> Path:
    """brain-tumor-mri/{Training,Testing}/<class>/ and breast-idc/<patient>/<0|1>/."""
    for origin, count in (("Training", 3), ("Testing", 1)):
        for c, name in enumerate(driver_classes("b_tumours_clean")):
            for i in range(count):
                save(root / f"brain-tumor-mri/{origin}/{name}/{origin[:2]}{i}.jpg",
                     noise_image(1000 + 10 * c + i + (5 if origin == "Testing" else 0)))
    seed = 0
    for patient in range(patients):
        for label in (0, 1):
            for i in range(patches):
                seed += 1
                tint = np.array([180, 90, 160] if label else [230, 200, 220], dtype=np.int16)
                pixels = np.clip(noise_image(seed, (50, 50)) // 4 + tint - 32, 0, 255)
                save(root / f"breast-idc/{1000 + patient}/{label}/"
                     f"{1000 + patient}_idx5_x{50 * i}_y0_class{label}.png",
                     pixels.astype(np.uint8))
    return root


def driver_classes(name: str) -> list[str]:
    return driver.run_spec(name)["params"]["classes"]


def run_driver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), *args], capture_output=True, text=True,
                          cwd=REPO, check=False)


@pytest.mark.parametrize("data", ["missing", "empty"])
def test_missing_data_gives_one_clear_line(tmp_path, data) -> None:
    if data == "empty":
        (tmp_path / "brain-tumor-mri").mkdir()
    done = run_driver("b_tumours_clean", "--data", str(tmp_path / "missing" if data ==
                                                       "missing" else tmp_path))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1
    assert ("does not exist" in message) if data == "missing" else ("brain-tumor-mri" in message)


def test_unknown_run_is_named_before_any_work(tmp_path) -> None:
    done = run_driver("no_such_run", "--data", str(tmp_path))
    assert done.returncode == 2 and "no run 'no_such_run'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", driver.available())
def test_every_run_file_gives_valid_params(tmp_path, name) -> None:
    spec = driver.run_spec(name)
    params = driver.merged(driver.read_yaml(REPO / "params.yaml"), spec["params"])
    full = driver.merged(params, spec.get("full_recipe", {}))
    for i, merged in enumerate((params, full)):
        path = tmp_path / f"params{i}.yaml"
        path.write_text(json.dumps(merged))  # JSON is YAML
        assert load_params(path).classes == spec["params"]["classes"]


def test_views_link_every_image_under_its_class(tmp_path) -> None:
    root = fake_datasets(tmp_path / "data", patients=2, patches=2)
    driver.view_idc(root, tmp_path / "idc")
    linked = sorted(p.relative_to(tmp_path / "idc").as_posix()
                    for p in (tmp_path / "idc").rglob("*.png"))
    assert len(linked) == 8 and all(p.is_symlink() for p in (tmp_path / "idc").rglob("*.png"))
    assert linked[0] == "idc/1000/1000_idx5_x0_y0_class1.png"
    assert all(p.startswith("idc/") == p.endswith("class1.png") for p in linked)
    driver.view_original(root, tmp_path / "original")
    assert (tmp_path / "original/mri/Testing/no_tumor/Te0.jpg").is_file()
    assert (tmp_path / "original/breast_histo/1001/0").is_dir()


@pytest.mark.slow
def test_a_run_writes_its_results_file(tmp_path) -> None:
    root = fake_datasets(tmp_path / "data")
    done = run_driver("c_idc_patient", "--data", str(root), "--work", str(tmp_path / "work"),
                      "--out", str(tmp_path / "results"), "--images", str(tmp_path / "images"))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "results/real_c_idc_patient.json").read_text())
    # The contact sheet goes where it is told: a test run leaves docs/images alone.
    assert (tmp_path / "images/shift-c_idc_patient.jpg").is_file()
    assert result["dedup"]["found"] == 72
    test = result["evaluate"]["test"]
    predictions = result["test_predictions"]
    assert len(predictions["label"]) == len(predictions["predicted"]) == test["n"]
    right = sum(a == b for a, b in zip(predictions["label"], predictions["predicted"],
                                       strict=True))
    assert test["accuracy"] == pytest.approx(right / test["n"])
    assert set(result["stage_seconds"]) == set(driver.STAGES)
    assert result["split"]["test"]["groups"] >= 1 and result["params"]["data"]["raw_dir"] == "view"
    split = pd.read_csv(tmp_path / "work/c_idc_patient/data/split/split.csv", dtype=str)
    patient = split["path"].str.split("/").str[1]
    assert (split.groupby(patient)["split"].nunique() == 1).all()  # no patient in two splits
    assert set(split["split"]) == {"train", "val", "test"}


def test_the_shift_findings_name_the_shifted_classes_and_the_largest_recall_drop() -> None:
    def auc(value: float, low: float) -> dict:
        return {"auc": value, "low": low, "high": value + 0.05, "n": [10, 10]}

    def side(value: float, low: float, nearest: float) -> dict:
        return {"domain_auc_features": auc(value, low), "nearest_training": {"median": nearest}}

    shift = {"overall": {"test": side(0.9, 0.85, 20.0), "val": side(0.5, 0.45, 10.0)},
             "per_class": {
                 "glioma": {"test": side(0.95, 0.9, 30.0), "val": side(0.5, 0.4, 12.0),
                            "recall": {"val": 0.9, "test": 0.3, "drop": 0.6}},
                 "none": {"test": side(0.5, 0.4, 11.0), "val": side(0.5, 0.4, 11.0),
                          "recall": {"val": 0.9, "test": 0.9, "drop": 0.0}}},
             "most_unlike": [{"class": "glioma", "predicted": "none"},
                             {"class": "glioma", "predicted": "glioma"},
                             {"class": "none", "predicted": "none"}]}
    assert driver.shift_findings(shift) == (
        "Training against test: ROC-AUC 0.90; against validation, the reference: 0.50. "
        "Classes whose test images a classifier tells from their training images (lower "
        "bound above 0.5): glioma. The largest recall drop, 0.90 to 0.30, is glioma's; its "
        "test images lie a median 30.0 from the nearest training image of their class "
        "(validation: 12.0). Of the 3 test images most unlike their class's training images, "
        "2 are glioma, and 1 is misclassified.")
