"""Slices of a 3-D MRI volume as images: the sample stage's training images and the
out-of-distribution detector's MRI from other scanners are cut the same way."""

from collections.abc import Iterator

import numpy as np

PLANES = ("sagittal", "coronal", "axial")  # the plane of the slices along axis 0, 1, 2


def brain_slices(volume: np.ndarray, axes: tuple[int, ...], min_foreground: float,
                 stops: dict[int, int] | None = None) -> Iterator[tuple[str, int, np.ndarray]]:
    """(plane, index, slice) for every slice along `axes` in which at least
    `min_foreground` of the pixels are brain (above a tenth of the volume's 99.5th
    percentile), rotated so that anterior or superior is at the top, as radiologists view
    slices. `stops` ends an axis early (the midline of a symmetric template)."""
    threshold = 0.1 * float(np.percentile(volume, 99.5))
    for axis in axes:
        for index in range((stops or {}).get(axis, volume.shape[axis])):
            pixels = np.rot90(np.take(volume, index, axis=axis))
            if (pixels > threshold).mean() >= min_foreground:
                yield PLANES[axis], index, pixels
