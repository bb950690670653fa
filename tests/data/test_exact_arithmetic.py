"""The data stages' scores are exact, so no BLAS kernel can change a decision."""

import numpy as np
import pytest

from medimg.data.perceptual import (
    DCT_BITS,
    LOW_DCT,
    Details,
    correlation,
    detail_correlation,
    phash,
    phashes,
)


def test_the_dct_table_is_whole_numbers_that_keep_every_sum_below_2_to_the_53() -> None:
    assert np.array_equal(LOW_DCT, np.round(LOW_DCT))
    largest = np.abs(LOW_DCT).sum(axis=1).max()  # the most one output row can gather
    assert 1023 * largest * largest < 2**53
    exact = np.cos(np.pi * np.outer(np.arange(8), 2 * np.arange(32) + 1) / 64)
    exact *= np.sqrt(2 / 32) * 2**DCT_BITS
    exact[0] /= np.sqrt(2)
    # No entry sits near a rounding boundary: any accurate cosine gives the same table.
    assert np.array_equal(np.round(exact), LOW_DCT)
    assert np.abs(exact - np.round(exact)).max() < 0.49


def test_a_mirror_symmetric_image_has_its_odd_coefficients_exactly_zero() -> None:
    half = np.random.default_rng(0).integers(0, 1024, (32, 16))
    small = np.concatenate([half, half[:, ::-1]], axis=1)
    low = LOW_DCT @ small.astype(np.float64) @ LOW_DCT.T
    assert np.all(low[:, 1::2] == 0.0)
    # A 64x64 thumbnail's pHash is that of its 2x2 sums: four times each grey level here.
    grey = small // 4
    thumb = np.repeat(np.repeat(grey, 2, 0), 2, 1).astype(np.uint8)
    assert phash(thumb) == int(phashes(grey[None])[0])


def test_phashes_refuses_values_its_exactness_does_not_cover() -> None:
    with pytest.raises(ValueError, match="whole numbers"):
        phashes(np.zeros((1, 32, 32), np.float64))
    with pytest.raises(ValueError, match="whole numbers"):
        phashes(np.full((1, 32, 32), 1024, np.int64))


def test_exact_correlations_agree_with_floating_point_ones() -> None:
    rng = np.random.default_rng(1)
    thumbs = rng.integers(0, 256, (6, 64, 64), dtype=np.uint8)
    thumbs[1] = np.clip(thumbs[0].astype(int) + rng.integers(-9, 10, (64, 64)), 0, 255)
    a, b = thumbs[0].astype(np.float64).ravel(), thumbs[1].astype(np.float64).ravel()
    assert correlation(thumbs[0], thumbs[1]) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    details = Details.of(thumbs)
    block = details.block(np.arange(6), np.arange(6))
    assert np.allclose(np.diag(block), 1.0) and np.array_equal(block, block.T)
    pairs = details.pair_correlations(np.array([0, 2, 0]), np.array([1, 3, 5]))
    assert np.array_equal(pairs, block[[0, 2, 0], [1, 3, 5]])
    assert pairs[0] == detail_correlation(thumbs[0], thumbs[1]) > 0.5 > abs(pairs[1])


def test_a_thumbnail_without_detail_correlates_zero_and_is_marked_blank() -> None:
    flat = np.full((2, 64, 64), 90, np.uint8)
    flat[1] = 30
    details = Details.of(flat)
    assert details.blank.all()
    assert details.block(np.array([0]), np.array([1]))[0, 0] == 0.0
    assert correlation(flat[0], flat[1]) == 0.0 and correlation(flat[0], flat[0]) == 1.0
