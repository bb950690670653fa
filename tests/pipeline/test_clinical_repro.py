"""`dvc repro` on hospital exports with only params changed, as a user with their own data
runs it: a PACS-style folder of DICOM series with a labels CSV, and a folder of NIfTI
volumes, through every stage to the exported model, with no patient in two splits and no
planted header value in any output, `dvc exp show` or `medimg predict`."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_dvc import DVC, make_tiny_repo, run

from conftest import header_values, planted_in, splits_per_patient
from medimg.data.synthetic_exports import dicom_export, nifti_export

pytestmark = pytest.mark.e2e

CLASSES = ["tumour", "normal"]
PATIENTS = 12


def pacs_export(target: Path) -> tuple[list[str], dict]:
    dicom_export(target / "data/pacs", count=PATIENTS, classes=tuple(CLASSES))
    return CLASSES, {"raw_dir": "data/pacs", "labels_file": "labels.csv", "groups_file": None}


def nifti_folder(target: Path) -> tuple[list[str], dict]:
    nifti_export(target / "data/nifti", count=PATIENTS, classes=tuple(CLASSES))
    return CLASSES, {"raw_dir": "data/nifti", "groups_file": None}


def written(repo: Path, raw: Path) -> list[Path]:
    """Every file the pipeline wrote (the export in `raw` aside): its outputs and the lock."""
    found = [path for folder in ("data", "metrics", "plots", "models")
             for path in (repo / folder).rglob("*")
             if path.is_file() and not path.is_relative_to(raw)]
    return [*found, repo / "dvc.lock"]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory) -> tuple[Path, str]:
    repo = make_tiny_repo(tmp_path_factory.mktemp("pacs"), pacs_export)
    return repo, run([*DVC, "repro"], repo)


@pytest.fixture(scope="module")
def nifti(tmp_path_factory) -> tuple[Path, str]:
    repo = make_tiny_repo(tmp_path_factory.mktemp("nifti"), nifti_folder)
    return repo, run([*DVC, "repro"], repo)


def test_a_pacs_export_runs_through_dvc_repro_split_by_patient(pacs) -> None:
    repo, _ = pacs
    raw = repo / "data/pacs"
    table = pd.read_csv(repo / "data/split/split.csv", dtype=str, keep_default_na=False)
    assert all((raw / path.split("#")[0]).is_file() for path in table["path"])
    assert len(splits_per_patient(raw, table)) == PATIENTS
    assert all(len(parts) == 1 for parts in splits_per_patient(raw, table).values())
    assert json.loads((repo / "metrics/split.json").read_text()) == {"patients_across_splits": 0}
    report = json.loads((repo / "metrics/report/report.json").read_text())
    assert report["metrics"]["test"]["n"] == (table["split"] == "test").sum()
    assert json.loads((repo / "models/model.json").read_text())["classes"] == CLASSES
    assert (repo / "models/model.onnx").is_file()
    # The first run created the pseudonym key inside the data folder: the data changed,
    # DVC says so, and one `dvc add` records it; then there is nothing left to run.
    assert (raw / "pseudonym.key").is_file()
    assert "data/pacs.dvc" in run([*DVC, "status"], repo)
    run([*DVC, "add", "-q", "data/pacs"], repo)
    assert "up to date" in run([*DVC, "status"], repo)
    assert "Running stage" not in run([*DVC, "repro"], repo)


def test_no_planted_header_value_reaches_an_output_a_log_or_a_prediction(pacs) -> None:
    repo, log = pacs
    raw = repo / "data/pacs"
    planted = header_values(raw)
    assert len(planted) > 7 * PATIENTS
    assert len(written(repo, raw)) > 50
    assert planted_in(written(repo, raw), planted) == {}
    shown = run([*DVC, "exp", "show", "--no-pager", "--csv"], repo)
    assert "patients_across_splits" in shown
    files = sorted(str(path) for path in raw.rglob("*") if path.is_file()
                   and path.suffix not in (".csv", ".key"))
    predicted = run([sys.executable, "-m", "medimg", "predict", *files[:20], "--model",
                     str(repo / "models")], repo)
    assert predicted.count("\n") > 20 and "normal" in predicted
    assert [value for value in planted if value in log + shown + predicted] == []


def test_a_folder_of_nifti_volumes_runs_through_dvc_repro_split_by_subject(nifti) -> None:
    repo, _ = nifti
    table = pd.read_csv(repo / "data/split/split.csv", dtype=str, keep_default_na=False)
    assert table["path"].str.contains("#axial=").all()
    subjects = table.groupby(table["path"].str.split("#").str[0])["split"].nunique()
    assert len(subjects) == PATIENTS and (subjects == 1).all()
    assert json.loads((repo / "metrics/split.json").read_text()) == {"patients_across_splits": 0}
    catalog = pd.read_csv(repo / "data/dedup/catalog.csv", dtype=str, keep_default_na=False)
    assert set(catalog["group_source"]) == {"volume"}
    assert (repo / "models/model.onnx").is_file()
