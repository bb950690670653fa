"""The edges of the similarity groups (`medimg.data.catalog.similarity_clusters`): pairs of
images close in pHash whose thumbnails share enough fine detail, where the detail needed
rises with the pHash distance."""

import numpy as np

from medimg.data.perceptual import Details, near_pairs


def correlation_needed(distance: np.ndarray, max_distance: int, min_correlation: float,
                       far_distance: int, far_correlation: float) -> np.ndarray:
    """Fine-detail correlation a similar pair needs at each pHash `distance`:
    `min_correlation` up to `max_distance` bits, then rising evenly to `far_correlation`
    at `far_distance` bits (and unreachable beyond)."""
    distance = np.asarray(distance, dtype=np.float64)
    span = max(far_distance - max_distance, 1)
    rise = (far_correlation - min_correlation) * np.clip(distance - max_distance, 0, None) / span
    return np.where(distance <= far_distance, min_correlation + rise, np.inf)


def similar_pairs(hashes: np.ndarray, thumbs: np.ndarray, max_distance: int,
                  min_correlation: float, far_distance: int, far_correlation: float,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Details, np.ndarray]:
    """Pairs (i < j) within `far_distance` pHash bits whose thumbnails' fine detail
    correlates at least `correlation_needed` at their distance (identical thumbnails score
    1; a thumbnail without detail matches only its twin), their scores, and the details of
    the rows in any candidate pair with those rows (ascending)."""
    far = max(far_distance, max_distance)
    first, second = near_pairs(hashes, far)
    rows, where = np.unique(np.r_[first, second], return_inverse=True)
    details = Details.of(thumbs[rows])
    at_first, at_second = where[:len(first)], where[len(first):]
    scores = np.minimum(details.pair_correlations(at_first, at_second), 1.0)
    flat = np.flatnonzero(details.blank[at_first] | details.blank[at_second])
    scores[flat] = (thumbs[first[flat]] == thumbs[second[flat]]).all(axis=(1, 2))
    distance = np.bitwise_count(hashes[first] ^ hashes[second])
    keep = scores >= correlation_needed(distance, max_distance, min_correlation, far,
                                        far_correlation)
    return first[keep], second[keep], scores[keep], details, rows
