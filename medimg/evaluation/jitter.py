"""Jittered copies of the training images for the out-of-distribution detector's fitting
set: what another scanner or another stain would make of the same anatomy or tissue, so
that the detector does not learn the sample's few sources as "the distribution".

A greyscale image (an MRI slice) gets another contrast: a gamma, a smooth multiplicative
bias field, sometimes its foreground's intensities inverted (T2-like: fluid bright), and a
new intensity window. A colour image (a stained patch) gets another stain: each channel's
optical density scaled and shifted (Beer-Lambert), then brightness. Only elementwise NumPy,
so the copies have the same bytes on every CPU.
"""

import numpy as np

GREY_SPREAD = 8  # an image whose channels never differ by more than this is greyscale
FOREGROUND = 0.04  # MRI intensities above this (of 1) are anatomy, not background


def bias_field(side: int, rng: np.random.Generator, strength: float = 0.4) -> np.ndarray:
    """A smooth multiplicative field: exp of a random quadratic over the image."""
    y, x = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side), indexing="ij")
    a = rng.uniform(-1, 1, 5)
    field = a[0] * x + a[1] * y + a[2] * x * x + a[3] * y * y + a[4] * x * y
    return np.exp(strength * field / max(float(np.abs(field).max()), 1e-9))


def new_contrast(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A greyscale image in [0, 1] as another MRI sequence and scanner might show it."""
    foreground = grey > FOREGROUND
    out = grey ** rng.uniform(0.5, 2.0) * bias_field(grey.shape[0], rng)
    if rng.random() < 0.4:
        out = np.where(foreground, 1.0 - 0.85 * np.minimum(out, 1.0), out)
    low, high = np.percentile(out, [rng.uniform(0, 2), rng.uniform(97, 100)])
    return np.clip((out - low) / max(high - low, 1e-6), 0.0, 1.0)


def new_stain(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image in [0, 1] as another stain batch and scanner might show it."""
    density = -np.log(np.maximum(rgb, 1 / 255))
    density = density * rng.uniform(0.7, 1.3, 3) + rng.uniform(-0.05, 0.05, 3)
    out = np.exp(-np.maximum(density, 0.0))
    return np.clip(out * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08), 0.0, 1.0)


def is_grey(image: np.ndarray) -> bool:
    """True for a uint8 H x W x 3 image whose channels never differ by more than
    GREY_SPREAD: a scan, not a stained slide."""
    spread = image.max(axis=2).astype(np.int16) - image.min(axis=2).astype(np.int16)
    return int(spread.max()) <= GREY_SPREAD


def jittered(images: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """`copies` jittered copies of each uint8 N x S x S x 3 image, image by image."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        pixels = np.asarray(image, dtype=np.float64) / 255
        grey = is_grey(image)
        for _ in range(copies):
            if grey:
                out.append(np.repeat(new_contrast(pixels.mean(axis=2), rng)[..., None], 3,
                                     axis=2))
            else:
                out.append(new_stain(pixels, rng))
    if not out:
        return np.zeros((0, *images.shape[1:]), dtype=np.uint8)
    return np.rint(np.stack(out) * 255).astype(np.uint8)
