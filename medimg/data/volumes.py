"""Slices of a 3-D MRI volume as images: the sample stage's training images and the
out-of-distribution detector's MRI from other scanners are cut the same way."""

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

PLANES = ("sagittal", "coronal", "axial")  # the plane of the slices along axis 0, 1, 2


def brain_slices(volume: np.ndarray, axes: tuple[int, ...], min_foreground: float,
                 stops: dict[int, int] | None = None) -> Iterator[tuple[str, int, np.ndarray]]:
    """(plane, index, slice) for every slice along `axes` in which at least
    `min_foreground` of the pixels are brain (above a tenth of the volume's 99.5th
    percentile), rotated so that anterior or superior is at the top, as radiologists view
    slices. `stops` ends an axis early (the midline of a symmetric template)."""
    threshold = foreground_threshold(volume)
    for axis in axes:
        for index in range((stops or {}).get(axis, volume.shape[axis])):
            pixels = slice_pixels(volume, axis, index)
            if (pixels > threshold).mean() >= min_foreground:
                yield PLANES[axis], index, pixels


def foreground_threshold(volume: np.ndarray) -> float:
    """Above this a voxel is foreground: a tenth of the volume's 99.5th percentile."""
    return 0.1 * float(np.percentile(volume, 99.5))


def slice_pixels(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` along `axis`, anterior or superior at the top."""
    return np.rot90(np.take(volume, index, axis=axis))


def to_uint8(volume: np.ndarray) -> np.ndarray:
    """Scale a volume to 0..255 by its 99.5th percentile, so one hot voxel cannot darken it."""
    volume = volume.astype(np.float64)
    top = float(np.percentile(volume, 99.5))
    return np.clip(np.rint(volume / max(top, 1e-9) * 255.0), 0, 255).astype(np.uint8)


def read_volume(path: Path) -> np.ndarray:
    """A NIfTI file's voxels in RAS orientation (axis 0 sagittal, 1 coronal, 2 axial); of a
    4-D series, its first volume."""
    image = nib.as_closest_canonical(nib.load(path))
    volume = np.asarray(image.dataobj, dtype=np.float32)
    return volume[..., 0] if volume.ndim == 4 else volume


def taken_slices(count: int, step: int, central: float) -> list[int]:
    """The slices taken of `count`: the central share `central`, then every `step`-th."""
    keep = max(1, round(count * central))
    start = (count - keep) // 2
    return list(range(start, start + keep, step))


def nonempty(volume: np.ndarray, axis: int, indices: list[int],
             min_foreground: float) -> list[bool]:
    """For each slice, whether at least `min_foreground` of it is foreground, by the rule
    `brain_slices` uses."""
    threshold = foreground_threshold(volume)
    return [bool((np.take(volume, index, axis=axis) > threshold).mean() >= min_foreground)
            for index in indices]
