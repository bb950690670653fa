"""Hospital exports built from real pixels that ship in packages, for the tests and the
clinical-export benchmark: a PACS-style folder of DICOM series (full headers, planted
identifiers, files without a suffix, one multi-frame file) with a labels CSV, and a
folder of NIfTI volumes.

The pixels are slabs of nilearn's MNI152 T1 template, grey- and white-matter maps: real
brain anatomy, one slab per patient, so neighbouring slices of a patient are as alike as
in a real series."""

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from medimg.data.volumes import read_volume

SLAB = 10  # slices of a patient
# Header values a de-identification test looks for in every output.
PLANTED = {"PatientName": "Doe^Jane{n}", "PatientID": "MRN-7731{n:02d}",
           "PatientBirthDate": "1961021{d}", "AccessionNumber": "ACC55{n:03d}",
           "InstitutionName": "St Elsewhere General {n}", "StudyDate": "2024031{d}",
           "ReferringPhysicianName": "House^Gregory{n}"}


@dataclass(frozen=True)
class Patient:
    number: int
    label: str
    template: str  # which volume its slices come from
    first: int  # its first axial slice


def template_volume(name: str) -> np.ndarray:
    """One of nilearn's MNI152 volumes (t1, gm, wm) in RAS orientation, as uint16."""
    folder = Path(str(files("nilearn") / "datasets" / "data"))
    volume = read_volume(folder / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz")
    return np.rint(volume / max(float(volume.max()), 1e-9) * 4000).astype(np.uint16)


def identifiers(number: int) -> dict[str, str]:
    """The planted header values of patient `number`."""
    return {key: value.format(n=number, d=number % 10) for key, value in PLANTED.items()}


def _uid(*parts: object) -> str:
    # pydicom hashes its sources joined with nothing between them: the separator keeps
    # (1, 23) and (12, 3) apart.
    return generate_uid(entropy_srcs=["/".join(str(part) for part in parts)])


def slice_dataset(pixels: np.ndarray, patient: int, series: int, index: int,
                  modality: str = "MR") -> Dataset:
    """One axial slice as a DICOM MR image with full headers (16-bit, 1 mm apart)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(patient, series, index)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    for key, value in identifiers(patient).items():
        setattr(ds, key, value)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = _uid(patient, "study")
    ds.SeriesInstanceUID = _uid(patient, series, "series")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series + 1, index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def patient_slices(patient: Patient, count: int, side: int | None = None) -> np.ndarray:
    """`count` neighbouring axial slices of the patient's template, anterior at the top,
    optionally resized to `side` x `side` by nearest neighbour."""
    volume = template_volume(patient.template)
    slices = np.stack([np.rot90(volume[:, :, patient.first + i]) for i in range(count)])
    if side is not None:
        rows = np.linspace(0, slices.shape[1] - 1, side).round().astype(int)
        cols = np.linspace(0, slices.shape[2] - 1, side).round().astype(int)
        slices = slices[:, rows][:, :, cols]
    return slices


def write_series(folder: Path, patient: Patient, series: int, slices: np.ndarray,
                 compressed: bool = False, suffix: str = "") -> list[Path]:
    """One series, a file per slice named IM<k> as PACS exports name them."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, pixels in enumerate(slices):
        ds = slice_dataset(pixels, patient.number, series, index)
        if compressed:
            ds.compress(RLELossless)
        path = folder / f"IM{index:04d}{suffix}"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def write_multiframe(path: Path, patient: Patient, series: int, slices: np.ndarray) -> None:
    """One multi-frame DICOM file holding every slice of a series."""
    ds = slice_dataset(slices[0], patient.number, series, 0)
    ds.NumberOfFrames = len(slices)
    ds.PixelData = np.ascontiguousarray(slices, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def patients(count: int, classes: tuple[str, str]) -> list[Patient]:
    """`count` patients, half of each class; the first class's slabs are of the T1
    template, the second's of the tissue maps, each patient's slab elsewhere in the head."""
    found = []
    for number in range(count):
        label = classes[number % 2]
        template = "t1" if number % 2 == 0 else ("gm", "wm")[(number // 2) % 2]
        # One slab of the head each: no two patients share anatomy.
        found.append(Patient(number, label, template, 30 + SLAB * number))
    return found


def dicom_export(root: Path, count: int = 12, slices: int = SLAB,
                 classes: tuple[str, str] = ("tumour", "normal")) -> list[Patient]:
    """A PACS-style export: <patient folder>/<study>/<series>/IM<k> for each patient (the
    last patient's series as one multi-frame file), and labels.csv of series folder,label
    with CRLF line endings and a byte-order mark, as spreadsheet programs write it."""
    people = patients(count, classes)
    rows = ["path,label"]
    for patient in people:
        pixels = patient_slices(patient, slices)
        folder = f"P{patient.number:03d}/study1/series1"
        if patient.number == count - 1:
            write_multiframe(root / folder / "volume.dcm", patient, 0, pixels)
        else:
            write_series(root / folder, patient, 0, pixels,
                         compressed=patient.number == 1, suffix=".dcm" * (patient.number == 2))
        rows.append(f"{folder},{patient.label}")
    (root / "labels.csv").write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode())
    return people


def nifti_export(root: Path, count: int = 6, slices: int = SLAB,
                 classes: tuple[str, str] = ("tumour", "normal")) -> list[Patient]:
    """A folder per class of NIfTI volumes, one per subject, each a slab of `slices`
    axial slices."""
    people = patients(count, classes)
    for patient in people:
        volume = template_volume(patient.template)[:, :, patient.first:patient.first + slices]
        path = root / patient.label / f"sub-{patient.number:02d}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume.astype(np.int16), np.eye(4)), path)
    return people
