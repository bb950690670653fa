"""Image decoding with one set of rules for every stage: EXIF orientation, any mode to
8-bit RGB, a pixel limit against decompression bombs, and a clear reason on failure.

A source is a file path or the bytes of an uploaded file (never written to disk). DICOM
files (`.dcm`, or any source with the DICOM preamble) are decoded with pydicom: the
file's rescale (modality LUT) and its first window are applied, MONOCHROME1 is inverted,
and every frame is an image of its own. A frame is addressed as `path#frame=K`
(`frame_path`), so one multi-frame file can fill several rows of a catalog. A NIfTI volume
(`.nii`, `.nii.gz`, read with nibabel) is an image per slice, addressed as
`path#axial=K` (or `coronal`, `sagittal`; `slice_path`): the volume in RAS orientation,
scaled to 8 bits by its own 99.5th percentile, cut as `medimg.data.volumes` cuts it."""

import io
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from medimg.data.volumes import PLANES, read_volume, slice_pixels, to_uint8

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp",
                            ".dcm"})
VOLUME_SUFFIXES = (".nii", ".nii.gz")
FRAME_MARK = "#frame="
# A file's path, or a frame of it, or a slice of a volume: `file#frame=K`, `file#axial=K`.
_ADDRESS = re.compile(rf"^(?P<file>.+)#(?P<part>frame|{'|'.join(PLANES)})=(?P<index>\d+)$")
# Volumes decoded and kept per process while their slices are read one by one.
VOLUMES_KEPT = 2
DICOM_MAGIC = (128, b"DICM")  # the preamble's marker: offset, bytes

# Pillow's own decompression-bomb guard, the starting value of dedup.max_pixels and the
# limit predict applies. Our limit decides: Pillow's global guard would raise first.
DEFAULT_MAX_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    """An input file that cannot be used as an image; the message is the reason."""


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_volume_name(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def frame_path(path: str, frame: int) -> str:
    """How frame `frame` (from 0) of a multi-frame DICOM file is named."""
    return f"{path}{FRAME_MARK}{frame}"


def slice_path(path: str, plane: str, index: int) -> str:
    """How slice `index` (from 0) along `plane` of a volume file is named."""
    return f"{path}#{plane}={index}"


def split_address(path: Path | str) -> tuple[Path, str | None, int | None]:
    """The file an address names, and its part: ('frame' or a plane, index), or
    (None, None) for a whole file."""
    match = _ADDRESS.match(str(path))
    if match is None:
        return Path(path), None, None
    return Path(match["file"]), match["part"], int(match["index"])


def is_dicom(source: Path | bytes) -> bool:
    offset, magic = DICOM_MAGIC
    if isinstance(source, bytes):
        return source[offset:offset + len(magic)] == magic
    if source.suffix.lower() == ".dcm":
        return True
    with source.open("rb") as handle:
        return handle.read(offset + len(magic))[offset:] == magic


def stretch(values: np.ndarray) -> np.ndarray:
    """Scale the used range of any numeric array to uint8 0..255 instead of clipping."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255.0
    return np.rint(scaled).astype(np.uint8)


def _to_8bit(image: Image.Image) -> Image.Image:
    # 16-bit and float greyscale: scale the used range to 0..255.
    return Image.fromarray(stretch(np.asarray(image)), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # H x W x 3, uint8, upright
    format: str  # as stored: JPEG, PNG, ...
    mode: str  # Pillow mode before conversion: L, RGBA, I;16, CMYK, ...


Source = Path | str | bytes


def load_frames(source: Source, max_pixels: int | None = None,
                draft: int | None = None) -> list[Decoded]:
    """Decode a file (path or bytes) to upright 8-bit RGB images, one per frame (one for
    anything but a multi-frame DICOM), or raise ImageError with a reason. A `frame_path`
    decodes that frame only.

    With `draft`, a JPEG may be decoded at a reduced scale whose sides stay at least
    `draft` pixels (for previews and checks on a reduced image; pixel hashes and
    training decode at full size)."""
    part = frame = None
    if not isinstance(source, bytes):
        source, part, frame = split_address(source)
    try:
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        if size == 0:
            raise ImageError("empty file")
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        if not isinstance(source, bytes) and is_volume_name(source):
            if part not in PLANES:
                raise ImageError("a volume: name one slice as FILE#axial=K")
            return [_volume_slice(source, part, frame, max_pixels)]
        if is_dicom(source):
            return _dicom_frames(handle, max_pixels, frame)
        return [_pillow_image(handle, max_pixels, draft)]
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError("not a recognised image") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"unreadable image: {err}") from err


def load_image(source: Source, max_pixels: int | None = None,
               draft: int | None = None) -> Decoded:
    """`load_frames` for a source that holds one image; a multi-frame DICOM is an error
    that says how to address one frame."""
    frames = load_frames(source, max_pixels, draft)
    if len(frames) > 1:
        raise ImageError(f"{len(frames)} frames; name one as FILE{FRAME_MARK}K")
    return frames[0]


def check_min_side(pixels: np.ndarray, min_side: int) -> None:
    """The dedup stage's smallest usable image; raise ImageError below it."""
    height, width = pixels.shape[:2]
    if min(height, width) < min_side:
        raise ImageError(f"smaller than min_side ({width}x{height} < {min_side})")


def _check_pixels(width: int, height: int, max_pixels: int | None, frames: int = 1) -> None:
    if max_pixels is not None and width * height * frames > max_pixels:
        count = f" x {frames} frames" if frames > 1 else ""
        raise ImageError(f"too many pixels ({width}x{height}{count} > {max_pixels})")


def _pillow_image(handle: Path | io.BytesIO, max_pixels: int | None,
                  draft: int | None) -> Decoded:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(handle) as image:
            _check_pixels(*image.size, max_pixels)
            if draft is not None:
                image.draft(image.mode, (draft, draft))
            image.load()
            stored_format, stored_mode = image.format or "", image.mode
            ImageOps.exif_transpose(image, in_place=True)
            pixels = np.asarray(to_rgb(image), dtype=np.uint8)
            return Decoded(pixels=pixels, format=stored_format, mode=stored_mode)


@lru_cache(maxsize=VOLUMES_KEPT)
def _volume_uint8(path: str, modified: int) -> np.ndarray:
    return to_uint8(read_volume(Path(path)))


def _volume_slice(path: Path, plane: str, index: int, max_pixels: int | None) -> Decoded:
    try:
        volume = _volume_uint8(os.fspath(path), path.stat().st_mtime_ns)
    except (nib.filebasedimages.ImageFileError, EOFError, zlib.error) as err:
        raise ImageError(f"unreadable volume: {err}") from err
    axis = PLANES.index(plane)
    if index >= volume.shape[axis]:
        raise ImageError(f"slice {index} out of range: the volume has {volume.shape[axis]}")
    grey = slice_pixels(volume, axis, index)
    _check_pixels(grey.shape[1], grey.shape[0], max_pixels)
    return Decoded(np.repeat(grey[..., None], 3, axis=2), "NIfTI", "L")


def _dicom_frames(handle: Path | io.BytesIO, max_pixels: int | None,
                  frame: int | None) -> list[Decoded]:
    try:
        dataset = pydicom.dcmread(handle)
    except InvalidDicomError as err:
        raise ImageError("not a recognised image") from err
    if "PixelData" not in dataset:
        raise ImageError("DICOM file holds no image (no Pixel Data)")
    count = int(dataset.get("NumberOfFrames") or 1)
    # The whole file is decoded at once, so the limit covers all its frames.
    _check_pixels(int(dataset.Columns), int(dataset.Rows), max_pixels, count)
    if frame is not None and frame >= count:
        raise ImageError(f"frame {frame} out of range: the file has {count}")
    try:
        values = dataset.pixel_array
    except (NotImplementedError, RuntimeError, AttributeError) as err:
        raise ImageError(f"DICOM pixel data not decodable: {err}") from err
    values = values if count > 1 else values[None]
    mode = str(dataset.get("PhotometricInterpretation", ""))
    wanted = range(count) if frame is None else [frame]
    return [Decoded(_dicom_rgb(dataset, values[index]), "DICOM", mode) for index in wanted]


def _dicom_rgb(dataset: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    """One frame to 8-bit RGB: colour frames (pydicom converts YBR to RGB) are stretched if
    deeper than 8 bits; greyscale gets the rescale, the window and MONOCHROME1 inversion."""
    if values.ndim == 3:
        return values if values.dtype == np.uint8 else stretch(values)
    grey = _window(np.asarray(apply_modality_lut(values, dataset), dtype=np.float64), dataset)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[..., None], 3, axis=2)


def _window(values: np.ndarray, dataset: pydicom.Dataset) -> np.ndarray:
    """DICOM's linear VOI window (PS3.3 C.11.2.1.2.1) of the file's first window to 0..255;
    without a window, the used range."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return stretch(values)
    center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (center, width))
    if width < 1:
        return stretch(values)
    scaled = ((values - (center - 0.5)) / max(width - 1, 1e-9) + 0.5).clip(0, 1)
    return np.rint(scaled * 255.0).astype(np.uint8)


def load_rgb(source: Source, max_pixels: int | None = None,
             draft: int | None = None) -> np.ndarray:
    """Decode an image file to an H x W x 3 uint8 array, or raise ImageError with a reason."""
    return load_image(source, max_pixels, draft).pixels
