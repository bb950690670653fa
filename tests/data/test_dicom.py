"""DICOM input: rescale, window and photometric interpretation applied, one image per
frame, in the decoder, in predict, in the service and in the dedup stage."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from test_dedup import run_dedup, use_dataset

from conftest import noise_image, png, save, wait_ready
from medimg.data.images import ImageError, frame_path, load_frames, load_image
from medimg.serving import predict
from medimg.serving.predictor import load_predictor
from medimg.serving.service import create_app


def write_dicom(path: Path, frames: np.ndarray, slope: float = 1.0, intercept: float = 0.0,
                window: tuple[float, float] | None = None,
                photometric: str = "MONOCHROME2") -> Path:
    """A greyscale MR file of uint16 frames (K x H x W), as a scanner would write it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    data = Dataset()
    data.file_meta = meta
    data.SOPClassUID, data.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    data.Modality = "MR"
    data.Rows, data.Columns = frames.shape[1:]
    if len(frames) > 1:
        data.NumberOfFrames = len(frames)
    data.SamplesPerPixel, data.PhotometricInterpretation = 1, photometric
    data.BitsAllocated, data.BitsStored, data.HighBit, data.PixelRepresentation = 16, 16, 15, 0
    data.RescaleSlope, data.RescaleIntercept = slope, intercept
    if window:
        data.WindowCenter, data.WindowWidth = window
    data.PixelData = frames.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    data.save_as(path, enforce_file_format=True)
    return path


def scan(frames: int = 1, seed: int = 0) -> np.ndarray:
    """Frames of random stored values 0..1000 that share nothing with each other."""
    return np.random.default_rng(seed).integers(0, 1000, (frames, 64, 64))


def test_the_files_rescale_and_window_map_to_8_bit(tmp_path) -> None:
    # Stored 0..1000, slope 2, intercept -100: values -100..1900; window 500 +- 100.
    stored = np.arange(64) * 10
    path = write_dicom(tmp_path / "a.dcm", np.tile(stored, (1, 64, 1)), slope=2.0,
                       intercept=-100.0, window=(500.0, 200.0))
    pixels = load_image(path).pixels
    assert pixels.shape == (64, 64, 3)
    row = pixels[0, :, 0]
    value = stored * 2.0 - 100.0
    assert (row[value <= 400] == 0).all() and (row[value >= 600] == 255).all()
    middle = np.flatnonzero((value > 420) & (value < 580))
    assert np.all(np.diff(row[middle].astype(int)) > 0)  # linear inside the window
    assert row[np.flatnonzero(value == 500)[0]] == pytest.approx(128, abs=1)


def test_monochrome1_is_inverted_and_no_window_uses_the_range(tmp_path) -> None:
    frames = scan()
    plain = load_image(write_dicom(tmp_path / "m2.dcm", frames)).pixels
    inverted = load_image(write_dicom(tmp_path / "m1.dcm", frames,
                                      photometric="MONOCHROME1")).pixels
    assert plain.min() == 0 and plain.max() == 255
    assert np.array_equal(inverted, 255 - plain)


def test_every_frame_is_an_image_from_a_path_or_from_bytes(tmp_path) -> None:
    path = write_dicom(tmp_path / "cine.dcm", scan(frames=3))
    frames = load_frames(path)
    assert len(frames) == 3 and all(f.format == "DICOM" for f in frames)
    assert not np.array_equal(frames[0].pixels, frames[2].pixels)
    from_bytes = load_frames(path.read_bytes())
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(frames, from_bytes,
                                                                    strict=True))
    assert np.array_equal(load_image(frame_path(str(path), 2)).pixels, frames[2].pixels)
    with pytest.raises(ImageError, match="3 frames"):
        load_image(path)
    with pytest.raises(ImageError, match="frame 5 out of range"):
        load_image(frame_path(str(path), 5))


def test_the_pixel_limit_counts_every_frame(tmp_path) -> None:
    path = write_dicom(tmp_path / "cine.dcm", scan(frames=3))
    assert len(load_frames(path, max_pixels=3 * 64 * 64)) == 3
    with pytest.raises(ImageError, match="too many pixels"):
        load_frames(path, max_pixels=3 * 64 * 64 - 1)


def test_pydicoms_own_files_decode() -> None:
    mr = load_image(get_testdata_file("MR_small.dcm")).pixels
    assert mr.shape == (64, 64, 3) and mr.max() > mr.min()
    colour = load_frames(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert len(colour) == 2 and colour[0].pixels.shape == (100, 100, 3)


def test_predict_gives_one_row_per_frame(tiny_model, tmp_path) -> None:
    cine = write_dicom(tmp_path / "in/cine.dcm", scan(frames=3))
    single = write_dicom(tmp_path / "in/single.dcm", scan())
    out = tmp_path / "out.csv"
    assert predict.main([str(tmp_path / "in"), "--model", str(tiny_model),
                         "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert table["path"].tolist() == [str(cine)] * 3 + [str(single)]
    assert table["frame"].tolist() == ["0", "1", "2", ""]
    assert (table["error"] == "").all() and (table["predicted"] != "").all()
    # The service decodes uploads the same way: bytes in, the same frames out.
    predictor = load_predictor(tiny_model, "torch")
    uploaded = predictor.decode(cine.read_bytes(), "cine.dcm")
    assert [frame.frame for frame in uploaded] == [0, 1, 2]
    probabilities = [answer["probabilities"]["red"]
                     for answer in predictor.predict(np.stack([f.pixels for f in uploaded]))]
    assert probabilities == pytest.approx(table["prob_red"].astype(float)[:3].tolist(), abs=1e-6)


def test_dedup_catalogs_each_frame_and_finds_a_copied_dicom(tmp_path, monkeypatch) -> None:
    raw = use_dataset(tmp_path, monkeypatch, ["mri", "photo"])
    write_dicom(raw / "mri/cine.dcm", scan(frames=3))
    (raw / "mri/copy.dcm").write_bytes((raw / "mri/cine.dcm").read_bytes())
    write_dicom(raw / "mri/other.dcm", scan(seed=7))
    save(raw / "photo/p.png", noise_image(1, size=(64, 64)))
    (raw / "photo/broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)

    counts, tables = run_dedup()

    catalog = tables["catalog"].set_index("path")
    assert {frame_path("mri/cine.dcm", k) for k in range(3)} <= set(catalog.index)
    removed = tables["duplicates"].set_index("path")
    assert {frame_path("mri/copy.dcm", k) for k in range(3)} == set(
        removed.index[removed["match"] == "exact"])
    # A DICOM object without pixels (a report, a key object) is not an image: ignored.
    assert counts["found"] == 9 and counts["ignored"] == 1
    assert tables["ignored"].values.tolist() == [
        ["photo/broken.dcm", "DICOM file holds no image (no Pixel Data)"]]


def test_the_service_answers_each_frame_of_an_uploaded_dicom(tiny_model, tmp_path) -> None:
    cine = write_dicom(tmp_path / "cine.dcm", scan(frames=3)).read_bytes()
    with TestClient(create_app(load_predictor(tiny_model, "torch"))) as client:
        wait_ready(client)
        answer = client.post("/predict", files=[("file", ("cine.dcm", cine)),
                                                ("file", ("x.png", png(noise_image(3))))])
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [(r["file"], r["frame"]) for r in results] == [
        ("cine.dcm", 0), ("cine.dcm", 1), ("cine.dcm", 2), ("x.png", None)]
    assert all(r["error"] is None and r["predicted"] for r in results)
