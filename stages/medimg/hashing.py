"""Content hashes: of the file bytes, and of the decoded pixels."""

import hashlib
from pathlib import Path

import numpy as np

_CHUNK = 1 << 20


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pixel_sha256(pixels: np.ndarray) -> str:
    """Hash of the decoded RGB pixels with their shape, so a PNG re-saved as a lossless
    copy with other metadata still hashes the same."""
    digest = hashlib.sha256()
    digest.update(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return digest.hexdigest()
