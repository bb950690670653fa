"""Content hashes: of the file bytes, and of the decoded pixels."""

import hashlib
from pathlib import Path

import numpy as np

from medimg.data.images import FRAME_MARK, split_frame

_CHUNK = 1 << 20


def file_sha256(path: Path | str) -> str:
    """Hash of the file's bytes; for one frame of a multi-frame DICOM (`path#frame=K`), of
    the bytes and the frame number, so frames of one file are not exact copies."""
    file, frame = split_frame(path)
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if frame is not None:
        digest.update(f"{FRAME_MARK}{frame}".encode())
    return digest.hexdigest()


def pixel_sha256(pixels: np.ndarray) -> str:
    """Hash of the decoded RGB pixels with their shape, so a PNG re-saved as a lossless
    copy with other metadata still hashes the same."""
    digest = hashlib.sha256()
    digest.update(str(pixels.shape).encode())
    digest.update(memoryview(np.ascontiguousarray(pixels, dtype=np.uint8)))
    return digest.hexdigest()
