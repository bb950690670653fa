"""Perceptual hashes, a Hamming-distance index, and the pixel check that confirms a match.

pHash alone also matches different images (neighbouring MRI slices sit at distance 2 to 8),
so every candidate pair it proposes is confirmed on the pixels before it counts.
"""

from itertools import combinations
from math import comb

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.ndimage import gaussian_filter

THUMB_SIZE = 64  # greyscale thumbnail for the pixel checks; pHash uses it at 32x32
HASH_BITS = 64
_MAX_TABLE_BITS = 24  # a dense bucket table of 2**24 entries is 128 MiB of int64


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """64x64 greyscale by area averaging: the input of pHash and of the pixel checks."""
    grey = Image.fromarray(rgb).convert("L")
    return np.asarray(grey.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX))


def phash(thumb: np.ndarray) -> int:
    """64-bit pHash of a 64x64 thumbnail: signs of the 8x8 lowest DCT frequencies of its
    32x32 reduction against their median."""
    small = thumb.astype(np.float64).reshape(32, 2, 32, 2).mean(axis=(1, 3))
    low = dctn(small, type=2, norm="ortho")[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two thumbnails; flat images correlate only with flat ones."""
    x = a.astype(np.float64).ravel() - a.mean()
    y = b.astype(np.float64).ravel() - b.mean()
    norm = float(np.sqrt((x @ x) * (y @ y)))
    if norm == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(x @ y) / norm


def detail_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of the fine detail (thumbnail minus its blur) of two thumbnails.

    Re-compressed, brightened and 90%-resized copies keep their detail (0.988 and above
    on Brain Tumor MRI images), while neighbouring 1 mm slices of the MNI template, whose
    plain correlation reaches 0.999, stay at 0.98 and below: this is the near-duplicate
    check, with its threshold (dedup.near_correlation) between the two.
    """
    def detail(thumb: np.ndarray) -> np.ndarray:
        values = thumb.astype(np.float64)
        return values - gaussian_filter(values, sigma=1.5)

    if np.array_equal(a, b):
        return 1.0
    return correlation(detail(a), detail(b))


def _band_plan(n: int, max_distance: int) -> tuple[int, int]:
    """Number of bands and per-band radius with the least expected work.

    Split 64 bits into k bands: two hashes within `max_distance` agree within
    `max_distance // k` bits on at least one band (pigeonhole), so probing each band's
    neighbourhood of that radius finds every pair. Cost: probes times bucket fill.
    """
    best: tuple[float, int] = (float("inf"), HASH_BITS)
    for bands in range(1, HASH_BITS + 1):
        width = -(-HASH_BITS // bands)
        if width > _MAX_TABLE_BITS:
            continue
        radius = max_distance // bands
        probes = sum(comb(width, r) for r in range(radius + 1))
        cost = bands * probes * n * (1.0 + n / 2.0**width)
        if cost < best[0]:
            best = (cost, bands)
    return best[1], max_distance // best[1]


def _flips(width: int, radius: int) -> list[int]:
    return [sum(1 << bit for bit in bits)
            for r in range(radius + 1) for bits in combinations(range(width), r)]


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) whose hashes differ in at most `max_distance` bits.

    Multi-index hashing: bucket each band of the hash in a dense table and probe the
    buckets within the band's radius, so the work grows with the number of true
    neighbours, not with the square of the number of images.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    bands, radius = _band_plan(n, max_distance)
    width = -(-HASH_BITS // bands)
    found = []
    for band in range(bands):
        shift = band * width
        bits = min(width, HASH_BITS - shift)
        keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        counts = np.bincount(keys, minlength=1 << bits)
        starts = np.cumsum(counts) - counts
        for flip in _flips(bits, radius):
            probe = keys ^ flip
            sizes = counts[probe]
            total = int(sizes.sum())
            if total == 0:
                continue
            src = np.repeat(np.arange(n), sizes)
            offsets = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            dst = order[np.repeat(starts[probe], sizes) + offsets]
            keep = src < dst
            src, dst = src[keep], dst[keep]
            close = np.bitwise_count(hashes[src] ^ hashes[dst]) <= max_distance
            found.append(src[close] * n + dst[close])
    pairs = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    return pairs // n, pairs % n
