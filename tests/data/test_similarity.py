"""Similarity groups: neighbouring slices of one scan join even when their pHashes lie
further apart than dedup.similar_hamming, as long as they share enough fine detail; the
further apart, the more detail it takes; strangers and chains of strangers stay apart."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.ndimage import gaussian_filter

from conftest import REPO
from medimg.data.catalog import similarity_clusters
from medimg.data.perceptual import detail_correlation, phash, thumbnail
from medimg.data.similar import correlation_needed
from medimg.errors import ParamsError
from medimg.params import load_params


def scan(seed: int, size: int = 128, depth: int = 10, widths: tuple = (0.38, 0.45),
         ) -> np.ndarray:
    """A synthetic MRI volume: smooth texture at several scales inside an ellipse, slices
    1 apart sharing most of their detail."""
    rng = np.random.default_rng(seed)
    volume = sum(gaussian_filter(rng.normal(0, 1, (depth, size, size)), (1.5, s, s)) * s
                 for s in (1, 2, 4))
    volume = (volume - volume.min()) / (volume.max() - volume.min()) * 180 + 50
    yy, xx = np.mgrid[:size, :size]
    inside = ((xx - size / 2) / (size * widths[0])) ** 2 + \
        ((yy - size / 2) / (size * widths[1])) ** 2 <= 1
    return np.where(inside, volume, 0)


def shaded(image: np.ndarray, strength: float) -> np.ndarray:
    """The image under a linear intensity ramp (a coil's bias field), which moves its pHash
    by many bits but leaves the fine detail."""
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]] / image.shape[0] - 0.5
    return np.clip(image * (1 + strength * (0.9 * xx + 0.4 * yy)), 0, 255)


def thumb(image: np.ndarray) -> np.ndarray:
    return thumbnail(np.rint(image).astype(np.uint8))


def hashes_of(thumbs: np.ndarray) -> np.ndarray:
    return np.array([phash(t) for t in thumbs], dtype=np.uint64)


def bits(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def test_the_detail_needed_is_flat_up_to_the_radius_then_rises_evenly_to_the_far_end() -> None:
    needed = correlation_needed(np.arange(20), 10, 0.6, 16, 0.75)
    assert np.allclose(needed[:11], 0.6)
    assert np.allclose(needed[[12, 14, 16]], [0.65, 0.7, 0.75])
    assert np.all(np.isinf(needed[17:]))  # beyond the far end nothing is an edge
    assert np.allclose(correlation_needed(np.arange(12), 10, 0.6, 10, 0.9)[:11], 0.6)


def test_neighbouring_slices_further_apart_in_phash_join_but_another_scan_does_not() -> None:
    one, other = scan(1), scan(2, widths=(0.34, 0.42))
    thumbs = np.stack([thumb(one[4]), thumb(shaded(one[5], 1.6)), thumb(other[4])])
    hashes = hashes_of(thumbs)
    assert 10 < bits(hashes[0], hashes[1]) <= 16  # the case: beyond the old radius
    assert detail_correlation(thumbs[0], thumbs[1]) >= 0.75
    hashes[2] = hashes[0]  # the other scan a candidate of both, with the very same pHash
    assert max(detail_correlation(thumbs[2], t) for t in thumbs[:2]) < 0.6

    near_only = similarity_clusters(hashes, thumbs, 10, 0.6, 0.2)
    assert near_only.tolist() == [0, 1, 2]  # the old rule leaves the two slices apart
    joined = similarity_clusters(hashes, thumbs, 10, 0.6, 0.2, far_distance=16,
                                 far_correlation=0.75)
    assert joined.tolist() == [0, 0, 2]
    same = similarity_clusters(hashes, thumbs, 10, 0.6, 0.2, far_distance=10,
                               far_correlation=0.75)
    assert same.tolist() == near_only.tolist()  # far_distance = similar_hamming: the old rule


def shared(rho: float, seed: int = 0) -> np.ndarray:
    """Two noise thumbnails whose fine detail correlates about `rho`."""
    rng = np.random.default_rng(seed)
    common, own = rng.normal(0, 1, (64, 64)), rng.normal(0, 1, (2, 64, 64))
    weight = np.sqrt(1 / rho - 1)
    return np.stack([np.clip(np.rint(128 + 30 * (common + weight * x)), 0, 255).astype(np.uint8)
                     for x in own])


@pytest.mark.parametrize("distance", [0, 6, 10, 12, 14, 16, 18])
def test_a_pair_further_apart_in_phash_needs_more_shared_detail(distance) -> None:
    thumbs = shared(0.68)
    score = detail_correlation(thumbs[0], thumbs[1])
    assert 0.65 < score < 0.7  # between the bars at 12 and at 14 bits
    hashes = np.array([0, (1 << distance) - 1], dtype=np.uint64)  # `distance` bits apart
    cluster = similarity_clusters(hashes, thumbs, 10, 0.6, 0.2, far_distance=16,
                                  far_correlation=0.75)
    assert (cluster[0] == cluster[1]) == (distance <= 12)


def chain(count: int, seed: int = 0) -> np.ndarray:
    """Thumbnails where each shares half its detail with the next and nothing with the
    others: a chain of strangers."""
    rng = np.random.default_rng(seed)
    noise = [rng.normal(0, 1, (64, 64)) for _ in range(count + 1)]
    return np.stack([np.clip(np.rint(128 + 25 * (noise[i] + noise[i + 1])), 0, 255)
                     .astype(np.uint8) for i in range(count)])


def test_the_configured_linkage_keeps_a_chain_of_strangers_in_short_runs() -> None:
    dedup = load_params(REPO / "params.yaml").dedup
    thumbs = chain(10)
    linked = similarity_clusters(hashes_of(thumbs), thumbs, 64, 0.3, dedup.similar_linkage,
                                 far_distance=64, far_correlation=0.3)
    assert np.unique(linked, return_counts=True)[1].max() <= 3
    for cluster in np.unique(linked):  # every group is a run of neighbours
        assert np.all(np.diff(np.flatnonzero(linked == cluster)) == 1)


@pytest.mark.parametrize(("change", "expected"), [
    ({"similar_far_hamming": 8}, "similar_far_hamming must be at least similar_hamming"),
    ({"similar_far_correlation": 0.5},
     "similar_far_correlation must be at least similar_correlation"),
])
def test_a_far_rule_that_would_ask_less_than_the_near_one_is_refused(tmp_path: Path, change,
                                                                      expected) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dedup"].update(change)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=expected):
        load_params(tmp_path / "params.yaml")
