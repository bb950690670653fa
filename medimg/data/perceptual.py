"""Perceptual hashes, a Hamming-distance index, and the pixel check that confirms a match.

pHash alone also matches different images (neighbouring MRI slices sit at distance 2 to 8),
so every candidate pair it proposes is confirmed on the pixels before it counts.
"""

from collections.abc import Iterable
from itertools import combinations
from math import comb

import cv2
import numpy as np
from PIL import Image
from scipy.fft import dct
from scipy.ndimage import gaussian_filter

from medimg.parallel import process_map

# OpenCV's own thread pool does not survive fork: a process-pool worker forked while the
# parent's OpenCV threads existed waited forever inside connectedComponentsWithStats (seen
# in the test suite). The work is spread over processes (medimg.parallel) instead.
cv2.setNumThreads(1)

THUMB_SIZE = 64  # greyscale thumbnail for the pixel checks; pHash uses it at 32x32
DETAIL_SIGMA = 1.5  # fine detail: the thumbnail minus its blur of this width
HASH_BITS = 64
LOW_DCT = dct(np.eye(32), type=2, norm="ortho", axis=0)[:8]  # 8 lowest frequencies of 32
_MAX_TABLE_BITS = 24  # a dense bucket table of 2**24 entries is 64 MiB of int32
_PARALLEL_QUERIES = 1 << 17  # fewer queries are not worth starting processes for


def luma(rgb: np.ndarray) -> np.ndarray:
    """Greyscale by ITU-R 601-2 luma, as Pillow's L mode (OpenCV's is the same, faster)."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """64x64 of a greyscale image by area averaging: the input of pHash and of the pixel
    checks."""
    small = Image.fromarray(grey).resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)
    return np.asarray(small)


def phash(thumb: np.ndarray) -> int:
    """64-bit pHash of a 64x64 thumbnail: signs of the 8x8 lowest DCT frequencies of its
    32x32 reduction against their median."""
    small = thumb.astype(np.float64).reshape(32, 2, 32, 2).mean(axis=(1, 3))
    return int(phashes(small[None])[0])


def phash_text(value: int) -> str:
    """A pHash as the catalog stores it: 16 hex digits."""
    return f"{value:016x}"


def phash_values(texts: Iterable[str]) -> np.ndarray:
    """The catalog's hex pHashes back as uint64."""
    return np.array([int(text, 16) for text in texts], dtype=np.uint64)


def phashes(smalls: np.ndarray) -> np.ndarray:
    """pHash of each of a stack of 32x32 images, as uint64."""
    low = (LOW_DCT @ smalls @ LOW_DCT.T).reshape(len(smalls), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


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
    if np.array_equal(a, b):
        return 1.0
    return correlation(detail_of(a), detail_of(b))


def detail_of(thumb: np.ndarray) -> np.ndarray:
    """Fine detail of a thumbnail: the thumbnail minus its blur."""
    values = thumb.astype(np.float64)
    return values - gaussian_filter(values, sigma=DETAIL_SIGMA)


def detail_vectors(thumbs: np.ndarray) -> np.ndarray:
    """Each thumbnail's fine detail as a unit vector, so that a dot product is the two
    thumbnails' `detail_correlation` (unless they are identical: that scores 1)."""
    values = thumbs.astype(np.float32)
    blurred = gaussian_filter(values, sigma=(0, DETAIL_SIGMA, DETAIL_SIGMA))
    detail = (values - blurred).reshape(len(thumbs), THUMB_SIZE * THUMB_SIZE)
    detail -= detail.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", detail, detail))[:, None]
    return np.divide(detail, norms, out=np.zeros_like(detail), where=norms > 0)


def _band_plan(queries: int, entries: int, max_distance: int) -> tuple[int, int]:
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
        cost = bands * probes * queries * (1.0 + entries / 2.0**width)
        if cost < best[0]:
            best = (cost, bands)
    return best[1], max_distance // best[1]


def _flips(width: int, radius: int) -> list[int]:
    return [sum(1 << bit for bit in bits)
            for r in range(radius + 1) for bits in combinations(range(width), r)]


def near_pairs_between(queries: np.ndarray, entries: np.ndarray, max_distance: int,
                       workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """All (query, entry) index pairs whose hashes differ in at most `max_distance` bits;
    with workers > 1 and many queries, shares of the queries go to a process pool."""
    queries = np.asarray(queries, dtype=np.uint64)
    if workers <= 1 or len(queries) < _PARALLEL_QUERIES:
        return _pairs_between(queries, entries, max_distance)
    shares = np.array_split(np.arange(len(queries)), workers)
    done = list(process_map(_pairs_between, [queries[share] for share in shares],
                            [entries] * workers, [max_distance] * workers, workers=workers))
    return (np.concatenate([share[asked] for share, (asked, _) in zip(shares, done, strict=True)]),
            np.concatenate([found for _, found in done]))


def _pairs_between(queries: np.ndarray, entries: np.ndarray, max_distance: int,
                   chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """All (query, entry) index pairs whose hashes differ in at most `max_distance` bits.

    Multi-index hashing: bucket each band of the entries' hashes in a dense table and
    probe the buckets within the band's radius, so the work grows with the number of true
    neighbours, not with the product of the two counts. Queries go in chunks to bound
    memory, in the order of their band so that the table is read nearly in sequence.
    """
    queries = np.asarray(queries, dtype=np.uint64)
    entries = np.asarray(entries, dtype=np.uint64)
    if len(queries) == 0 or len(entries) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    bands, radius = _band_plan(len(queries), len(entries), max_distance)
    width = -(-HASH_BITS // bands)
    found = []
    for band in range(bands):
        shift = band * width
        bits = min(width, HASH_BITS - shift)
        mask = np.uint64((1 << bits) - 1)
        keys = ((entries >> np.uint64(shift)) & mask).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        by_key = entries[order]
        counts = np.bincount(keys, minlength=1 << bits).astype(np.int32)
        starts = (np.cumsum(counts) - counts).astype(np.int32)
        query_keys = ((queries >> np.uint64(shift)) & mask).astype(np.int64)
        query_order = np.argsort(query_keys, kind="stable")
        flips = _flips(bits, radius)
        for first in range(0, len(queries), chunk):
            asked = query_order[first:first + chunk]
            part, part_keys = queries[asked], query_keys[asked]
            for flip in flips:
                probe = part_keys ^ flip
                sizes = counts[probe]
                total = int(sizes.sum())
                if total == 0:
                    continue
                src = np.repeat(np.arange(len(part)), sizes)
                offsets = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
                dst = np.repeat(starts[probe], sizes) + offsets
                close = np.bitwise_count(part[src] ^ by_key[dst]) <= max_distance
                found.append(asked[src[close]] * len(entries) + order[dst[close]])
    pairs = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    return pairs // len(entries), pairs % len(entries)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) whose hashes differ in at most `max_distance` bits."""
    first, second = near_pairs_between(hashes, hashes, max_distance)
    keep = first < second
    return first[keep], second[keep]
