"""Content hashes: of the file bytes, and of the decoded pixels."""

import hashlib
from pathlib import Path

import numpy as np

from medimg.data.images import split_address

_CHUNK = 1 << 20


def file_sha256(path: Path | str) -> str:
    """Hash of the file's bytes; for one frame of a multi-frame DICOM (`path#frame=K`) or
    one slice of a volume (`path#axial=K`), of the bytes and the part, so the frames of
    one file are not exact copies."""
    file, part, index = split_address(path)
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if part is not None:
        digest.update(f"#{part}={index}".encode())
    return digest.hexdigest()


def pixel_sha256(pixels: np.ndarray) -> str:
    """Hash of the decoded RGB pixels with their shape, so a PNG re-saved as a lossless
    copy with other metadata still hashes the same."""
    digest = hashlib.sha256()
    digest.update(str(pixels.shape).encode())
    digest.update(memoryview(np.ascontiguousarray(pixels, dtype=np.uint8)))
    return digest.hexdigest()
