"""What a DICOM file's header says about where it belongs: patient, study, series,
instance, and its place in the series. Read without the pixels; only pseudonyms of the
identifiers leave this module's callers (`medimg.data.pseudonyms`)."""

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

# Storage classes that hold no image: structured reports, presentation states, key
# objects, raw data, encapsulated documents. Recorded as ignored, with their name.
NO_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "RAW", "DOC", "REG", "SEG", "RTSTRUCT",
                                 "RTPLAN", "RTDOSE"})

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class Header:
    patient: str  # PatientID, "" when absent
    study: str  # StudyInstanceUID
    series: str  # SeriesInstanceUID
    instance: str  # SOPInstanceUID
    modality: str
    frames: int
    has_pixels: bool
    position: tuple[float, ...] | None  # ImagePositionPatient
    orientation: tuple[float, ...] | None  # ImageOrientationPatient
    number: int | None  # InstanceNumber


def _floats(value: object) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in value) if value is not None else None
    except (TypeError, ValueError):
        return None


def read_header(path: Path) -> Header | str:
    """The header of one DICOM file, or the reason it cannot be read."""
    try:
        # Large values (the pixels) are only located, not read.
        dataset = pydicom.dcmread(path, defer_size=1024)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        return f"unreadable DICOM header: {type(err).__name__}"
    number = dataset.get("InstanceNumber")
    try:
        number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        number = None
    return Header(patient=str(dataset.get("PatientID", "") or "").strip(),
                  study=str(dataset.get("StudyInstanceUID", "") or ""),
                  series=str(dataset.get("SeriesInstanceUID", "") or ""),
                  instance=str(dataset.get("SOPInstanceUID", "") or ""),
                  modality=str(dataset.get("Modality", "") or "").upper(),
                  frames=int(dataset.get("NumberOfFrames") or 1),
                  has_pixels=any(tag in dataset for tag in PIXEL_TAGS),
                  position=_floats(dataset.get("ImagePositionPatient")),
                  orientation=_floats(dataset.get("ImageOrientationPatient")),
                  number=number)


def slice_order(headers: list[Header]) -> list[int]:
    """Positions of a series' files in slice order: along the slice normal by
    ImagePositionPatient when every file has it, else by InstanceNumber, else as found."""
    if all(h.position and h.orientation and len(h.orientation) == 6 for h in headers):
        row, column = headers[0].orientation[:3], headers[0].orientation[3:]
        normal = (row[1] * column[2] - row[2] * column[1], row[2] * column[0] - row[0] * column[2],
                  row[0] * column[1] - row[1] * column[0])
        depth = [sum(p * n for p, n in zip(h.position, normal, strict=True)) for h in headers]
        return sorted(range(len(headers)), key=lambda i: (depth[i], i))
    if all(h.number is not None for h in headers):
        return sorted(range(len(headers)), key=lambda i: (headers[i].number, i))
    return list(range(len(headers)))
