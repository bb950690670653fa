"""Local features: a crop anywhere, flipped or not, becomes a candidate pair with its
transform, found through the index, and passes the registered check on the finer image;
neighbouring slices, cropped or not, fail it."""

import numpy as np
import pytest
from PIL import Image
from test_edited_copies import head, mni_slices

from medimg.data.edits import FINE_SIDE, Views, check_affine, reduce_grey
from medimg.data.features import candidate_pairs, local_features

CROP = (10, 40, 202, 232)  # 75% of each side of a 256-pixel image, off the centre


def greys(*images: Image.Image, side: int = 128) -> list[np.ndarray]:
    return [reduce_grey(np.asarray(image.convert("L")), side) for image in images]


def cropped(image: Image.Image, box: tuple[int, int, int, int] = CROP) -> Image.Image:
    return image.crop(box).resize(image.size, Image.Resampling.BILINEAR)


def views(*images: Image.Image) -> Views:
    fine = greys(*images, side=FINE_SIDE)
    return Views(greys(*images), [1.0] * len(images), fine.__getitem__)


def test_a_crop_anywhere_is_a_candidate_with_its_zoom_and_place() -> None:
    original = Image.fromarray(head(1, size=256))
    (pair,) = candidate_pairs([local_features(g) for g in greys(original, cropped(original))])
    assert (pair.first, pair.second, pair.mirrored) == (0, 1, False)
    # At 128 pixels the crop starts at (5, 20) and shows the content 1 / 0.75 times larger.
    expected = np.array([[1 / 0.75, 0, -5 / 0.75], [0, 1 / 0.75, -20 / 0.75]])
    np.testing.assert_allclose(pair.affine[:, :2], expected[:, :2], atol=0.03)
    np.testing.assert_allclose(pair.affine[:, 2], expected[:, 2], atol=2.0)


def test_a_flipped_crop_is_found_through_the_mirror() -> None:
    original = Image.fromarray(head(2, size=256))
    copy = cropped(original).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    (pair,) = candidate_pairs([local_features(g) for g in greys(original, copy)])
    assert pair.mirrored
    score, edit = check_affine(views(original, copy), pair.first, pair.second, pair.mirrored,
                               pair.affine, 0.95)
    assert score >= 0.95 and edit.startswith("hflip crop 0.7"), (score, edit)


def test_a_crop_is_confirmed_and_named_from_either_side() -> None:
    original = Image.fromarray(head(3, size=256))
    for images in ((original, cropped(original)), (cropped(original), original)):
        (pair,) = candidate_pairs([local_features(g) for g in greys(*images)])
        score, edit = check_affine(views(*images), pair.first, pair.second, pair.mirrored,
                                   pair.affine, 0.95)
        assert score >= 0.95 and edit == "crop 0.75", (score, edit)


def test_neighbouring_slices_are_not_confirmed_even_as_candidates() -> None:
    slices = [Image.fromarray(pixels).resize((256, 256)) for pixels in mni_slices(70, 6)]
    pairs = candidate_pairs([local_features(g) for g in greys(*slices)])
    assert len(pairs) < 15  # not all pairs: most matches disagree or map nearly unchanged
    for pair in pairs:
        score, _ = check_affine(views(*slices), pair.first, pair.second, pair.mirrored,
                                pair.affine, 0.95)
        assert score < 0.95


@pytest.mark.parametrize("apart", [3, 6])
def test_a_cropped_neighbouring_slice_fails_the_check(apart: int) -> None:
    first, other = (Image.fromarray(pixels).resize((256, 256))
                    for pixels in mni_slices(60, apart + 1)[::apart])
    box = (20, 20, 224, 224)
    copy = cropped(first, box)
    (pair,) = candidate_pairs([local_features(g) for g in greys(first, copy)])
    score, _ = check_affine(views(first, copy), pair.first, pair.second, pair.mirrored,
                            pair.affine, 0.95)
    assert score >= 0.95  # the slice's own crop passes
    # The neighbour cropped alike, mapped by that very transform, does not: its detail
    # differs once the outline it shares is evened out.
    score, _ = check_affine(views(first, cropped(other, box)), pair.first, pair.second,
                            pair.mirrored, pair.affine, 0.95)
    assert score < 0.95
