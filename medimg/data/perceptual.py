"""Perceptual hashes, a Hamming-distance index, and the pixel check that confirms a match.

pHash alone also matches different images (neighbouring MRI slices sit at distance 2 to 8),
so every candidate pair it proposes is confirmed on the pixels before it counts.

Both are decisions, so both are done in whole numbers: every product and partial sum is
an integer below 2**53, exact in float64 whatever order a BLAS kernel adds them in. In
floating point the kernel OpenBLAS picks for the CPU decided which images the study kept:
a left-right symmetric MRI slice has half its low DCT coefficients at zero, and the
rounding noise of the sums set their pHash bits (docs/pipeline.md#reproducibility).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations, pairwise
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
# The 8 lowest DCT frequencies of 32 in steps of 2**-DCT_BITS: with inputs below 2**10 (a
# sum of 2x2 grey levels) both products stay below 2**48, so the coefficients are exact.
DCT_BITS = 16
LOW_DCT = np.round(dct(np.eye(32), type=2, norm="ortho", axis=0)[:8] * 2**DCT_BITS)
_SMALL_LIMIT = 1 << 10  # phashes' inputs are below this
# Fine detail in whole steps of 1/DETAIL_STEPS grey level (|detail| <= 255, so below 2**16):
# a dot product of two 4096-value details is below 2**44, exact in float64.
DETAIL_STEPS = 256
_PIXELS = THUMB_SIZE * THUMB_SIZE
_BLOCK = 16  # rows of the first images per matrix product in `Details.pair_correlations`
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
    32x32 reduction (sums of 2x2 pixels) against their median."""
    small = thumb.astype(np.int64).reshape(32, 2, 32, 2).sum(axis=(1, 3))
    return int(phashes(small[None])[0])


def phash_text(value: int) -> str:
    """A pHash as the catalog stores it: 16 hex digits."""
    return f"{value:016x}"


def phash_values(texts: Iterable[str]) -> np.ndarray:
    """The catalog's hex pHashes back as uint64."""
    return np.array([int(text, 16) for text in texts], dtype=np.uint64)


def phashes(smalls: np.ndarray) -> np.ndarray:
    """pHash of each of a stack of 32x32 images of whole numbers from 0 to 1023, as
    uint64; exact, so the same bits on every CPU (ties with the median count as below)."""
    if not np.issubdtype(smalls.dtype, np.integer) or (
            smalls.size and not 0 <= int(smalls.min()) <= int(smalls.max()) < _SMALL_LIMIT):
        raise ValueError(f"phashes takes whole numbers from 0 to {_SMALL_LIMIT - 1}")
    low = (LOW_DCT @ smalls.astype(np.float64) @ LOW_DCT.T).reshape(len(smalls), -1)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def pearson(dots: np.ndarray, sums: tuple[np.ndarray, np.ndarray],
            spreads: tuple[np.ndarray, np.ndarray], size: int) -> np.ndarray:
    """Pearson correlations of pairs of integer vectors of `size` values from their exact
    dot products, sums and spreads (size x sum of squares - sum**2): the whole-number
    parts are exact in int64 and the rest is one correctly rounded float64 step each, so
    every CPU gets the same bits. A vector without spread correlates 0."""
    covariance = size * np.asarray(dots).astype(np.int64) - sums[0] * sums[1]
    norm = np.sqrt(spreads[0].astype(np.float64) * spreads[1].astype(np.float64))
    out = np.zeros(np.broadcast(covariance, norm).shape)
    return np.divide(covariance, norm, out=out, where=norm > 0)


def _spread(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum and spread (count x sum of squares - sum**2) of each row of an integer matrix."""
    wide = values.astype(np.int64)
    sums = wide.sum(axis=1)
    return sums, values.shape[1] * np.einsum("ij,ij->i", wide, wide) - sums * sums


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two uint8 thumbnails, exactly rounded; flat images correlate
    only with flat ones."""
    x, y = (np.asarray(t, dtype=np.int64).reshape(1, -1) for t in (a, b))
    (sum_x, spread_x), (sum_y, spread_y) = _spread(x), _spread(y)
    if spread_x[0] == 0 or spread_y[0] == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(pearson(x @ y.T, (sum_x, sum_y), (spread_x, spread_y), x.shape[1])[0, 0])


def detail_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of the fine detail (thumbnail minus its blur) of two thumbnails.

    Re-compressed, brightened and 90%-resized copies keep their detail (0.988 and above
    on Brain Tumor MRI images), while neighbouring 1 mm slices of the MNI template, whose
    plain correlation reaches 0.999, stay at 0.98 and below: this is the near-duplicate
    check, with its threshold (dedup.near_correlation) between the two.
    """
    if np.array_equal(a, b):
        return 1.0
    return float(Details.of(np.stack([a, b])).pair_correlations(np.array([0]), np.array([1]))[0])


@dataclass(frozen=True)
class Details:
    """The fine detail of thumbnails (each minus its blur) in whole steps of
    1/DETAIL_STEPS grey level, one row each, with each row's sum and spread: what
    `pearson` needs for exact correlations."""

    values: np.ndarray  # int32 (n, THUMB_SIZE**2)
    sums: np.ndarray  # int64 (n,)
    spreads: np.ndarray  # int64 (n,)

    @classmethod
    def of(cls, thumbs: np.ndarray) -> "Details":
        values = thumbs.astype(np.float64)
        blurred = gaussian_filter(values, sigma=(0, DETAIL_SIGMA, DETAIL_SIGMA))
        steps = np.rint((values - blurred) * DETAIL_STEPS).astype(np.int32)
        steps = steps.reshape(len(thumbs), _PIXELS)
        return cls(steps, *_spread(steps))

    @property
    def blank(self) -> np.ndarray:
        """Rows without detail: such a thumbnail matches only its twin."""
        return self.spreads == 0

    def block(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Correlations of every row in `rows` with every row in `columns`."""
        dots = self.values[rows].astype(np.float64) @ self.values[columns].astype(np.float64).T
        return pearson(dots, (self.sums[rows][:, None], self.sums[columns][None]),
                       (self.spreads[rows][:, None], self.spreads[columns][None]), _PIXELS)

    def pair_correlations(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Correlation of rows first[k] and second[k] for every k. Pairs are taken by
        blocks of _BLOCK first rows, each one matrix product against the union of their
        partners: far less memory traffic than gathering both rows of every pair."""
        order = np.argsort(first, kind="stable")
        first_sorted, second_sorted = first[order], second[order]
        heads = np.unique(first_sorted)[::_BLOCK]
        bounds = np.r_[np.searchsorted(first_sorted, heads), len(first_sorted)]
        scores = np.empty(len(first), dtype=np.float64)
        for start, stop in pairwise(bounds):
            rows, at_row = np.unique(first_sorted[start:stop], return_inverse=True)
            columns, at_column = np.unique(second_sorted[start:stop], return_inverse=True)
            scores[order[start:stop]] = self.block(rows, columns)[at_row, at_column]
        return scores


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
