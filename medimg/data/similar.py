"""The edges of the similarity groups (`medimg.data.catalog.similarity_clusters`): pairs of
images close in pHash whose thumbnails share enough fine detail, where the detail needed
rises with the pHash distance."""

from itertools import pairwise

import numpy as np

from medimg.data.perceptual import detail_vectors, near_pairs

_BLOCK = 16  # rows of the first images per matrix product in `pair_products`


def correlation_needed(distance: np.ndarray, max_distance: int, min_correlation: float,
                       far_distance: int, far_correlation: float) -> np.ndarray:
    """Fine-detail correlation a similar pair needs at each pHash `distance`:
    `min_correlation` up to `max_distance` bits, then rising evenly to `far_correlation`
    at `far_distance` bits (and unreachable beyond)."""
    distance = np.asarray(distance, dtype=np.float64)
    span = max(far_distance - max_distance, 1)
    rise = (far_correlation - min_correlation) * np.clip(distance - max_distance, 0, None) / span
    return np.where(distance <= far_distance, min_correlation + rise, np.inf)


def pair_products(vectors: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """vectors[first[k]] . vectors[second[k]] for every k. Pairs are taken by blocks of
    _BLOCK first rows, each one matrix product against the union of their partners: far
    less memory traffic than gathering both vectors of every pair."""
    order = np.argsort(first, kind="stable")
    first_sorted, second_sorted = first[order], second[order]
    heads = np.unique(first_sorted)[::_BLOCK]
    bounds = np.r_[np.searchsorted(first_sorted, heads), len(first_sorted)]
    products = np.empty(len(first), dtype=np.float64)
    for start, stop in pairwise(bounds):
        rows, at_row = np.unique(first_sorted[start:stop], return_inverse=True)
        columns, at_column = np.unique(second_sorted[start:stop], return_inverse=True)
        block = vectors[rows] @ vectors[columns].T
        products[order[start:stop]] = block[at_row, at_column]
    return products


def similar_pairs(hashes: np.ndarray, thumbs: np.ndarray, max_distance: int,
                  min_correlation: float, far_distance: int, far_correlation: float,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Pairs (i < j) within `far_distance` pHash bits whose thumbnails' fine detail
    correlates at least `correlation_needed` at their distance (identical thumbnails score
    1; a thumbnail without detail matches only its twin), their scores, and the detail
    vectors of the rows in any candidate pair."""
    far = max(far_distance, max_distance)
    first, second = near_pairs(hashes, far)
    rows, where = np.unique(np.r_[first, second], return_inverse=True)
    vectors = detail_vectors(thumbs[rows])
    at_first, at_second = where[:len(first)], where[len(first):]
    scores = np.minimum(pair_products(vectors, at_first, at_second), 1.0)
    blank = ~vectors.any(axis=1)
    flat = np.flatnonzero(blank[at_first] | blank[at_second])
    scores[flat] = (thumbs[first[flat]] == thumbs[second[flat]]).all(axis=(1, 2))
    distance = np.bitwise_count(hashes[first] ^ hashes[second])
    keep = scores >= correlation_needed(distance, max_distance, min_correlation, far,
                                        far_correlation)
    return (first[keep], second[keep], scores[keep],
            dict(zip(rows.tolist(), vectors, strict=True)))
