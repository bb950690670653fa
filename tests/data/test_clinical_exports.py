"""Clinical exports as they come: DICOM series and NIfTI volumes, labels from a manifest,
split by patient from the headers, and no identifier in any output."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid
from test_dedup import use_dataset

import dedup
import split
from conftest import REPO, header_values, planted_in, splits_per_patient
from medimg.data.manifest import read_manifest
from medimg.data.pseudonyms import Pseudonyms, read_key
from medimg.data.synthetic_exports import (
    dicom_export,
    identifiers,
    nifti_export,
    patients,
    slice_dataset,
    write_series,
)
from medimg.data.walk import walk_dataset
from medimg.errors import DatasetError, SplitError
from medimg.params import Params, load_params

CLASSES = ["tumour", "normal"]


def run_stages(capsys) -> str:
    dedup.main()
    split.main()
    captured = capsys.readouterr()
    return captured.out + captured.err


def outputs(root: Path) -> list[Path]:
    return [path for folder in ("data", "metrics", "plots") for path in (root / folder).rglob("*")
            if path.is_file()]


def test_a_pacs_export_is_split_by_patient_with_no_identifier_in_any_output(
        tmp_path, monkeypatch, capsys) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv",
                      groups_file=None)
    people = dicom_export(raw)
    # The user's own grouping would be per image: the headers must group anyway.
    log = run_stages(capsys)

    table = pd.read_csv("data/split/split.csv", dtype=str, keep_default_na=False)
    ten = len(people) * 10
    assert len(table) == ten  # every slice, the multi-frame file's 10 frames included
    assert sum("#frame=" in path for path in table["path"]) == 10
    assert all(len(parts) == 1 for parts in splits_per_patient(raw, table).values())
    assert json.loads(Path("metrics/split.json").read_text())["patients_across_splits"] == 0
    report = json.loads(Path("metrics/report/split.json").read_text())
    assert report["overlap"]["patient"] == 0 and report["overlap"]["series"] == 0
    assert report["groups_from"]["(all)"]["patients"] == len(people)
    # Each row's path starts with the file it came from.
    assert all((raw / path.split("#")[0]).is_file() for path in table["path"])
    planted = header_values(raw)
    assert len(planted) > 7 * len(people)
    assert planted_in(outputs(tmp_path), planted) == {}
    assert [value for value in planted if value in log] == []


def test_patients_put_in_two_splits_by_a_groups_file_are_counted_and_refused(
        tmp_path, monkeypatch, capsys) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv",
                      groups_file="groups.csv")
    dicom_export(raw, count=6)
    files = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("IM*"))
    rows = pd.DataFrame({"path": files, "group": [f"g{i}" for i in range(len(files))]})
    rows.to_csv(raw / "groups.csv", index=False)  # one group per slice: the old mistake
    with pytest.raises(SplitError, match=r"patient patient-[0-9a-f]{16} in \["):
        run_stages(capsys)


def test_nifti_volumes_are_cut_into_slices_and_split_by_subject(
        tmp_path, monkeypatch, capsys) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, slice_step=2)
    people = nifti_export(raw, count=12)
    run_stages(capsys)
    table = pd.read_csv("data/split/split.csv", dtype=str, keep_default_na=False)
    assert len(table) == len(people) * 5  # every second of 10 axial slices
    assert all(re.fullmatch(r"(tumour|normal)/sub-\d\d\.nii\.gz#axial=\d+", p)
               for p in table["path"])
    subjects = table.groupby(table["path"].str.split("#").str[0])["split"].nunique()
    assert (subjects == 1).all() and len(subjects) == len(people)
    assert set(table["group_source"]) <= {"volume", "similarity"}
    ignored = pd.read_csv("data/dedup/ignored.csv")
    assert len(ignored) == len(people)  # each volume's untaken slices, counted
    assert ignored["reason"].str.startswith("5 of 10 axial slices not taken").all()


def test_a_manifest_label_not_in_classes_stops_the_first_stage_naming_the_row(
        tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv")
    dicom_export(raw, count=4)
    text = (raw / "labels.csv").read_text(encoding="utf-8-sig").replace(
        "P002/study1/series1,tumour", "P002/study1/series1,glioma")
    (raw / "labels.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"labels.csv line 4: label 'glioma' is not in "
                                           r"params 'classes'"):
        dedup.main()
    assert not Path("data").exists() and not Path("metrics").exists()


@pytest.mark.parametrize(("row", "message"), [
    ("P009/study1/series1,tumour", r"1 row\(s\) name no file \(path\), line\(s\) 6"),
    ("P001/study1/series1,tumour", r"lines 3 and 6: path under two labels"),
])
def test_bad_manifest_rows_are_named(tmp_path, monkeypatch, row, message) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv")
    dicom_export(raw, count=4)
    with (raw / "labels.csv").open("a") as handle:
        handle.write(row + "\n")
    with pytest.raises(DatasetError, match=message):
        dedup.main()


@pytest.mark.parametrize("labels_per", ["image", "patient"])
def test_a_patient_under_two_labels_is_an_error_only_when_labels_are_per_patient(
        tmp_path, monkeypatch, labels_per) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv",
                      labels_per=labels_per)
    people = dicom_export(raw, count=4)
    # A second series of patient 0 (a tumour patient), labelled normal.
    write_series(raw / "P000/study1/series2", people[0], 1, np.zeros((3, 64, 64), np.uint16))
    with (raw / "labels.csv").open("a", newline="") as handle:
        handle.write("P000/study1/series2,normal\r\n")
    if labels_per == "image":
        dedup.main()
        catalog = pd.read_csv("data/dedup/catalog.csv", dtype=str, keep_default_na=False)
        patient = catalog[catalog["path"].str.startswith("P000/")]
        assert set(patient["class"]) == set(CLASSES) and patient["group"].nunique() == 1
        return
    with pytest.raises(DatasetError) as raised:
        dedup.main()
    message = str(raised.value)
    assert "data.labels_per: patient" in message and "line 2)" in message
    assert "line 6)" in message and "P000/study1/series2/IM0000" in message
    assert identifiers(0)["PatientID"] not in message
    assert not Path("data/dedup").exists()


def test_a_manifest_by_patient_id_labels_every_series_of_the_patient(
        tmp_path, monkeypatch, capsys) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv")
    people = dicom_export(raw, count=4)
    rows = ["PatientID,label"] + [f"{identifiers(p.number)['PatientID']},{p.label}"
                                   for p in people]
    (raw / "labels.csv").write_text("\n".join(rows) + "\n")
    dedup.main()
    catalog = pd.read_csv("data/dedup/catalog.csv")
    labels = catalog.groupby(catalog["path"].str[:4])["class"].agg(set)
    assert labels.to_dict() == {f"P{p.number:03d}": {p.label} for p in people}


def test_a_frame_takes_its_files_row_of_the_groups_file(tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv",
                      groups_file="groups.csv")
    dicom_export(raw, count=4)
    multiframe = "P003/study1/series1/volume.dcm"
    pd.DataFrame({"path": [multiframe], "group": ["scanner-7"]}).to_csv(raw / "groups.csv",
                                                                      index=False)
    dedup.main()
    catalog = pd.read_csv("data/dedup/catalog.csv")
    frames = catalog[catalog["path"].str.startswith(multiframe)]
    assert len(frames) == 10 and frames["group"].nunique() == 1
    assert (frames["group_source"] == "metadata").all()
    assert frames["group"].iat[0] != "scanner-7"  # a pseudonym

    pd.DataFrame({"path": ["P007/nothing.dcm"], "group": ["x"]}).to_csv(raw / "groups.csv",
                                                                       index=False)
    with pytest.raises(DatasetError, match=r"groups.csv: 1 row\(s\) name no file found, "
                                           r"first line 2: P007/nothing.dcm"):
        dedup.main()


def test_one_sop_instance_twice_is_one_image_and_one_series_holds_no_near_copies(
        tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv")
    dicom_export(raw, count=4)
    # The same instance again, re-encoded (RLE) with a display window: other pixels.
    copy = pydicom.dcmread(raw / "P000/study1/series1/IM0003")
    copy.compress(RLELossless, generate_instance_uid=False)
    copy.WindowCenter, copy.WindowWidth = 1500, 2000
    copy.save_as(raw / "P000/study1/series1/IM0003_rle", enforce_file_format=True)
    # A slice of patient 1 again, a little brighter and noisier, as the next slice of its
    # series (an acquisition of its own) and as a slice of another series (a copy).
    person = patients(4, ("tumour", "normal"))[1]
    series = raw / "P001/study1/series1"
    pixels = pydicom.dcmread(series / "IM0004").pixel_array.astype(np.float64)
    noise = np.random.default_rng(0).normal(0, 20, pixels.shape)
    again = np.clip(pixels * 1.05 + noise, 0, 65535).astype(np.uint16)
    slice_dataset(again, person.number, 0, 10).save_as(series / "IM0010",
                                                       enforce_file_format=True)
    other = raw / "P001/study1/series2"
    other.mkdir()
    copy = np.clip(again + np.random.default_rng(1).normal(0, 20, pixels.shape), 0, 65535)
    slice_dataset(copy.astype(np.uint16), person.number, 1, 0).save_as(
        other / "IM0000", enforce_file_format=True)
    with (raw / "labels.csv").open("a") as handle:
        handle.write("P001/study1/series2,normal\n")
    dedup.main()
    removed = pd.read_csv("data/dedup/duplicates.csv")
    assert removed[["path", "match"]].values.tolist() == [
        ["P000/study1/series1/IM0003_rle", "instance"], ["P001/study1/series2/IM0000", "near"]]
    report = json.loads(Path("metrics/report/dedup.json").read_text())
    assert report["instance_duplicates"] == 1 and report["near_duplicates"] == 1
    assert "P001/study1/series1/IM0010" in set(pd.read_csv("data/dedup/catalog.csv")["path"])


def test_malformed_series_are_recorded_and_no_good_slice_is_lost(tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv")
    dicom_export(raw, count=4)
    series = raw / "P001/study1/series1"
    (series / "IM0005").unlink()  # a missing slice
    report = pydicom.dcmread(series / "IM0006")
    report.Modality = "SR"  # a structured report in the series folder
    del report.PixelData
    report.SOPInstanceUID = generate_uid()
    report.save_as(series / "SR0001", enforce_file_format=True)
    no_pixels = pydicom.dcmread(series / "IM0007")
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = generate_uid()
    no_pixels.save_as(series / "XX0001", enforce_file_format=True)
    mixed = raw / "P002/study1/series1"
    ct = pydicom.dcmread(mixed / "IM0000.dcm")  # this export's one series with suffixes
    ct.Modality = "CT"
    ct.save_as(mixed / "IM0000.dcm", enforce_file_format=True)
    (raw / "P003/study1/series1/notes.txt").write_text("not an image")
    dedup.main()
    ignored = pd.read_csv("data/dedup/ignored.csv").set_index("path")["reason"].to_dict()
    assert ignored == {
        "P001/study1/series1/SR0001": "DICOM file holds no image (modality SR)",
        "P001/study1/series1/XX0001": "DICOM file holds no image (no Pixel Data)",
        "P003/study1/series1/notes.txt": "not an image file type"}
    notes = sorted(pd.read_csv("data/dedup/series.csv", keep_default_na=False)["note"])
    assert notes == ["", "", "1 slice(s) missing (InstanceNumber 1..10, 9 files)",
                     "mixed modalities CT, MR"]
    assert len(pd.read_csv("data/dedup/catalog.csv")) == 4 * 10 - 1


def test_dicom_slices_are_read_in_slice_order_whatever_their_file_names(tmp_path) -> None:
    person = patients(1, ("tumour", "normal"))[0]
    pixels = np.stack([np.full((20, 20), 100 * (i + 1), np.uint16) for i in range(4)])
    written = write_series(tmp_path / "s", person, 0, pixels)
    for path, name in zip(written, ("d", "b", "c", "a"), strict=True):
        path.rename(path.with_name(name))  # names no longer follow the slices
    (tmp_path / "labels.csv").write_text("path,label\ns,tumour\n")
    walk = walk_dataset(tmp_path, ["tumour"], manifest=read_manifest(tmp_path / "labels.csv",
                                                                      ["tumour"]))
    ordered = [c.path for c in sorted(walk.candidates, key=lambda c: c.position)]
    assert ordered == ["s/d", "s/b", "s/c", "s/a"]


def test_pseudonyms_depend_on_the_key_and_nothing_else(tmp_path) -> None:
    first = Pseudonyms(tmp_path / "a.key")
    again = Pseudonyms(tmp_path / "a.key")
    other = Pseudonyms(tmp_path / "b.key")
    assert first("patient", "MRN-1") == again("patient", "MRN-1") != other("patient", "MRN-1")
    assert first("patient", "MRN-1") != first("patient", "MRN-2")
    assert (tmp_path / "a.key").stat().st_mode & 0o077 == 0
    (tmp_path / "c.key").write_text("not hex\n")
    with pytest.raises(DatasetError, match=r"c.key is not a pseudonym key"):
        read_key(tmp_path / "c.key")


def test_similarity_off_may_be_written_unquoted() -> None:
    raw = load_params(REPO / "params.yaml").model_dump()
    raw["dedup"]["similarity"] = False  # what YAML makes of `similarity: off`
    assert Params.model_validate(raw).dedup.similarity == "off"
    raw["dedup"]["similarity"] = True
    assert Params.model_validate(raw).dedup.similarity == "on"


def test_a_constant_patient_id_falls_back_to_the_study(tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, CLASSES, labels_file="labels.csv")
    dicom_export(raw, count=4)
    for path in [*raw.rglob("IM*"), *raw.rglob("*.dcm")]:
        ds = pydicom.dcmread(path)
        ds.PatientID = "ANONYMOUS"  # what some anonymisers write into every file
        ds.save_as(path, enforce_file_format=True)
    dedup.main()
    catalog = pd.read_csv("data/dedup/catalog.csv")
    assert set(catalog["group_source"]) == {"StudyInstanceUID"}
    assert catalog.groupby(catalog["path"].str[:4])["group"].nunique().eq(1).all()
    assert catalog["group"].nunique() == 4  # one study per patient, not one for all
