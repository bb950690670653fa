"""Edited copies: hashes of canonical views of an image, and the registered check that
proves a copy.

A rotated, flipped, cropped, padded or captioned copy has a different pHash from its
original, so each image is hashed as several views: its foreground (the content inside a
uniform border), the whole frame, the central 90% and 80% of the frame, and the
foreground turned by +-7 degrees, each in the eight orientations of the square. A copy's
own foreground or frame, unturned, lands within a few bits of one of its original's
views, and that view says which edit to undo. The pair only counts once the undone copy,
registered onto the original by an affine ECC fit, correlates in its fine detail
(dedup.edit_correlation): neighbouring slices of one scan stay below that, copies above.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from medimg.data.perceptual import phashes

GREY_SIDE = 128  # longer side of the greyscale image kept for the views and the check
CHECK_SIDE = 96  # both views are resampled to this square for the registered check
SCREEN_SIDE = 32  # a coarser check first; most candidates fail it by a wide margin
# A local-feature candidate (a crop anywhere) that passes at CHECK_SIDE is confirmed on a
# finer greyscale image of this longer side, compared at FINE_CHECK_SIDE: at GREY_SIDE,
# neighbouring slices and 70% crops were not apart on the MRI set.
FINE_SIDE = 256
FINE_CHECK_SIDE = 160
SCREEN_MARGIN = 0.1  # a candidate this far below the threshold at SCREEN_SIDE is dropped
ORIENTATIONS = ("none", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose",
                "transverse")
# name, share of the frame kept (crop views), turn in degrees (rotated views)
VIEWS = (("pad", 0.0, 0.0), ("frame", 1.0, 0.0), ("crop 0.9", 0.9, 0.0),
         ("crop 0.8", 0.8, 0.0), ("rotate -7", 0.0, -7.0), ("rotate 7", 0.0, 7.0))
FRAME = 1  # the view that is the whole frame
QUERY_VIEWS = (0, FRAME)  # a copy is looked up by its foreground and its frame, unturned
PLAIN = FRAME * len(ORIENTATIONS)  # the frame unturned: the near-duplicate check's own hypothesis
# A turned or flipped copy's hash is its original's turned hash, as near as a plain
# copy's; on the MRI set the farther turned candidates were nearly all strangers.
TURNED_HAMMING = 2
_BORDER_SHARE = 0.8  # share of the outer ring near one value for it to count as border
_BORDER_TOLERANCE = 16  # grey levels from the border value that still count as border
_FOREGROUND_STEP = 24  # grey levels from the border value that count as content


def reduce_grey(grey: np.ndarray, side: int = GREY_SIDE) -> np.ndarray:
    """A uint8 greyscale image area-reduced so its longer side is at most `side`."""
    scale = side / max(grey.shape)
    if scale >= 1.0:
        return grey
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def foreground_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the content inside a uniform border, or the whole frame.

    Content is what differs from the border's value; small islands far from the main
    content (a burnt-in caption) are left out: components under 5% of the largest.
    """
    height, width = grey.shape
    ring = np.concatenate([grey[:2].ravel(), grey[-2:].ravel(), grey[:, :2].ravel(),
                           grey[:, -2:].ravel()])
    background = int(np.searchsorted(np.cumsum(np.bincount(ring, minlength=256)),
                                     (ring.size + 1) // 2))  # the median grey level
    if np.mean(cv2.absdiff(ring, background).ravel() <= _BORDER_TOLERANCE) < _BORDER_SHARE:
        return 0, 0, width, height
    _, mask = cv2.threshold(cv2.absdiff(grey, background), _FOREGROUND_STEP, 1,
                            cv2.THRESH_BINARY)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return 0, 0, width, height
    stats = stats[1:]
    big = stats[stats[:, cv2.CC_STAT_AREA] >= 0.05 * stats[:, cv2.CC_STAT_AREA].max()]
    x0, y0 = big[:, cv2.CC_STAT_LEFT].min(), big[:, cv2.CC_STAT_TOP].min()
    x1 = (big[:, cv2.CC_STAT_LEFT] + big[:, cv2.CC_STAT_WIDTH]).max()
    y1 = (big[:, cv2.CC_STAT_TOP] + big[:, cv2.CC_STAT_HEIGHT]).max()
    return int(x0), int(y0), int(x1), int(y1)


_TURNS = {"none": lambda a: a, "rot90": lambda a: a.T[::-1], "rot180": lambda a: a[::-1, ::-1],
          "rot270": lambda a: a.T[:, ::-1], "hflip": lambda a: a[:, ::-1],
          "vflip": lambda a: a[::-1], "transpose": lambda a: a.T,
          "transverse": lambda a: a.T[::-1, ::-1]}


def orient(image: np.ndarray, name: str) -> np.ndarray:
    """One of the eight orientations of the square, by name (rot90 as np.rot90)."""
    return np.ascontiguousarray(_TURNS[name](image))


def _turned(grey: np.ndarray, degrees: float) -> np.ndarray:
    """The image turned about its centre on a canvas that holds all of it."""
    height, width = grey.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    size = (round(width * cos + height * sin), round(width * sin + height * cos))
    matrix[:, 2] += (size[0] - width) / 2, (size[1] - height) / 2
    return cv2.warpAffine(grey, matrix, size, flags=cv2.INTER_LINEAR)


def view(grey: np.ndarray, index: int, side: int,
         box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """View number `index` of VIEWS, squashed to side x side float32; `box` is the image's
    foreground_box, when known."""
    _, keep, degrees = VIEWS[index]
    image = _turned(grey, degrees) if degrees else grey
    height, width = image.shape
    if keep:
        cut_x, cut_y = round(width * (1 - keep) / 2), round(height * (1 - keep) / 2)
        box = (cut_x, cut_y, width - cut_x, height - cut_y)
    elif degrees or box is None:
        box = foreground_box(image)
    x0, y0, x1, y1 = box
    crop = image[y0:y1, x0:x1]
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)


def _hashes(smalls: np.ndarray) -> np.ndarray:
    """pHash of each 32x32 view in each of the eight orientations: views x ORIENTATIONS."""
    return phashes(np.stack([_TURNS[name](small) for small in smalls for name in ORIENTATIONS]))


@dataclass(frozen=True)
class ViewHashes:
    query: np.ndarray  # uint64 per QUERY_VIEWS entry
    index: np.ndarray  # uint64, distinct values only
    code: np.ndarray  # int16 per index hash: view * 8 + orientation
    share: float  # content_share of the image


def content_share(grey: np.ndarray, box: tuple[int, int, int, int] | None = None) -> float:
    """Share of the frame inside the foreground box: a border added to a copy lowers it,
    and no turn or flip changes it."""
    x0, y0, x1, y1 = box or foreground_box(grey)
    return (x1 - x0) * (y1 - y0) / grey.size


def view_hashes(grey: np.ndarray) -> ViewHashes:
    """pHashes of every view in every orientation, and the query hashes."""
    box = foreground_box(grey)
    every = _hashes(np.stack([view(grey, number, 32, box) for number in range(len(VIEWS))])
                    .astype(np.int16))  # whole grey levels: pHash's exact arithmetic
    values, first = np.unique(every, return_index=True)
    order = np.argsort(first)  # keep the first view and orientation that gave a value
    return ViewHashes(query=every[[n * len(ORIENTATIONS) for n in QUERY_VIEWS]],
                      index=values[order], code=first[order].astype(np.int16),
                      share=content_share(grey, box))


def _band_pass(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 0.75) - cv2.GaussianBlur(image, (0, 0), 3.0)


def _robust_correlation(a: np.ndarray, b: np.ndarray, drop: float = 0.05) -> float:
    """Correlation after leaving out the `drop` share of largest disagreements, so burnt-in
    text on one image does not hide that the rest is the same."""
    if a.size < 100:
        return 0.0
    a, b = a.astype(np.float64), b.astype(np.float64)
    a = (a - a.mean()) / (a.std() + 1e-6)
    b = (b - b.mean()) / (b.std() + 1e-6)
    residual = np.abs(a - b)
    keep = residual <= np.quantile(residual, 1.0 - drop)
    a, b = a[keep] - a[keep].mean(), b[keep] - b[keep].mean()
    # NumPy's own pairwise sums, never a BLAS dot: their order is the same on every CPU.
    norm = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b)) / norm if norm > 0 else 0.0


@dataclass(frozen=True)
class Registered:
    score: float  # detail correlation after registration
    scale: float  # how much larger the copy shows the content (1 / crop share)
    degrees: float  # turn of the copy against the original, beyond the view's own
    warp: np.ndarray  # 3x3: a point of the original's view to the same point of the copy's


def _evened(detail: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Detail divided by its local strength (floored at a fiftieth of the mean), so faint
    texture counts as much as a bright outline."""
    energy = cv2.GaussianBlur(detail * detail, (0, 0), 4.0)
    floor = 0.02 * float(np.mean(detail[inside] ** 2)) if inside.any() else 1.0
    return detail / np.sqrt(energy + max(floor, 1e-6))


def register(original: np.ndarray, copy: np.ndarray, steps: int = 30,
             coverage: np.ndarray | None = None, even: bool = False) -> Registered:
    """Fit `copy` onto `original` (same-size float32 views) with an affine ECC of at most
    `steps` iterations and score the fine detail where both are defined and either shows
    content; `coverage` (1 where `copy` shows its image, 0 where it was padded) defaults to
    all of it. With `even`, the detail's local strength is evened out first: the bright
    skull outline that every slice of a head shares then no longer outweighs the inside."""
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, steps, 1e-3)
    try:
        _, warp = cv2.findTransformECC(original, copy, warp, cv2.MOTION_AFFINE, criteria,
                                       None, 3)
    except cv2.error:  # no convergence: score the views as they are
        warp = np.eye(2, 3, dtype=np.float32)
    side = original.shape[::-1]
    flags = cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP
    moved = cv2.warpAffine(copy, warp, side, flags=flags)
    shown = np.ones_like(copy) if coverage is None else coverage
    inside = cv2.warpAffine(shown, warp, side, flags=flags) > 0.99
    # Content is above 10 grey levels, on the copy after matching its brightness to the
    # original's, so a brightened copy's noisy black background stays out.
    gain = np.percentile(original, 99) / max(float(np.percentile(moved, 99)), 1.0)
    inside &= (original > 10) | (moved * gain > 10)
    inside = cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    detail, moved_detail = _band_pass(original), _band_pass(moved)
    if even:
        detail, moved_detail = _evened(detail, inside), _evened(moved_detail, inside)
    score = _robust_correlation(detail[inside], moved_detail[inside])
    linear = warp[:, :2].astype(np.float64)
    left, _, right = np.linalg.svd(linear)  # the rotation closest to the fitted map
    turn = left @ right
    return Registered(score=score, scale=float(np.sqrt(abs(np.linalg.det(linear)))),
                      degrees=float(np.degrees(np.arctan2(turn[1, 0], turn[0, 0]))),
                      warp=np.vstack([warp.astype(np.float64), [0.0, 0.0, 1.0]]))


class Views:
    """The views of a list of greyscale images, each made once while it is in use (a
    candidate image is usually checked against several others), their content_share, and
    each image's finer greyscale image from `fine` (loaded once while in use)."""

    def __init__(self, greys: list[np.ndarray], shares: list[float],
                 fine: Callable[[int], np.ndarray], cached: int = 4096) -> None:
        self.greys, self.shares = greys, shares
        self.get = lru_cache(maxsize=cached)(self._make)
        self.fine = lru_cache(maxsize=256)(fine)

    def _make(self, image: int, number: int, side: int) -> np.ndarray:
        return view(self.greys[image], number, side)


def check_pair(views: Views, copy: int, query: int, original: int, code: int,
               min_score: float) -> tuple[float, str]:
    """Registered detail correlation of image `copy` (looked up by QUERY_VIEWS[query])
    against view `code` of image `original`, and a name for the edit found, such as
    'rot90 crop 0.80'.

    The fit runs at SCREEN_SIDE first; only candidates that come within SCREEN_MARGIN of
    `min_score` there are fitted again at CHECK_SIDE, which gives the score.
    """
    number, turn = divmod(int(code), len(ORIENTATIONS))
    for side, steps in ((SCREEN_SIDE, 8), (CHECK_SIDE, 30)):
        reference = orient(views.get(original, number, side), ORIENTATIONS[turn])
        fit = register(reference, views.get(copy, QUERY_VIEWS[query], side), steps)
        if fit.score < min_score - SCREEN_MARGIN:
            break
    _, keep, degrees = VIEWS[number]
    parts = [] if turn == 0 else [ORIENTATIONS[turn]]
    share = (keep or 1.0) / fit.scale
    if share < 0.95:
        parts.append(f"crop {share:.2f}")
    if share >= 0.95 and abs(views.shares[copy] - views.shares[original]) > 0.05:
        parts.append("pad")
    turned = degrees - fit.degrees
    if abs(turned) >= 2.0:
        parts.append(f"rotate {turned:.0f}")
    return fit.score, " ".join(parts) or "none"


def _orientation_matrices() -> dict[str, np.ndarray]:
    """Each of ORIENTATIONS as the 2x2 map of pixel offsets from the centre (x right,
    y down), found by turning a probe pattern the way `orient` does."""
    probe = np.zeros((3, 3), np.uint8)
    probe[1, 2], probe[2, 1] = 1, 2  # one step right and one step down of the centre
    matrices = {}
    for name in ORIENTATIONS:
        turned = orient(probe, name)
        columns = [np.argwhere(turned == mark)[0][::-1] - 1 for mark in (1, 2)]
        matrices[name] = np.array(columns, dtype=np.float64).T
    return matrices


_ORIENTATION_MATRICES = _orientation_matrices()
_MIN_OVERLAP = 0.25  # of the original's frame: a smaller shared part proves nothing
_EDGE = 13  # pixels: twice the band-pass's wider blur (3), either side


def _affine_name(to_original: np.ndarray) -> str:
    """The edit that a similarity map from a copy's pixels to its original's undoes, named
    as `check_pair` names them: orientation, crop share or pad, leftover rotation."""
    linear = np.linalg.inv(to_original[:, :2])  # original to copy
    zoom = float(np.sqrt(abs(np.linalg.det(linear))))
    shape = linear / zoom
    best, degrees = "none", 180.0
    for name, matrix in _ORIENTATION_MATRICES.items():
        if np.linalg.det(matrix) * np.linalg.det(shape) < 0:  # a mirror only as a mirror
            continue
        turn = shape @ np.linalg.inv(matrix)
        angle = float(np.degrees(np.arctan2(turn[1, 0], turn[0, 0])))
        if abs(angle) < abs(degrees):
            best, degrees = name, angle
    parts = [] if best == "none" else [best]
    if 1 / zoom < 0.95:
        parts.append(f"crop {1 / zoom:.2f}")
    if 1 / zoom > 1.05:  # the copy shows the content smaller, as a padded one does
        parts.append("pad")
    if abs(degrees) >= 2.0:
        parts.append(f"rotate {-degrees:.0f}")
    return " ".join(parts) or "none"


def _shared_box(copy_shape: tuple[int, ...], original_shape: tuple[int, ...],
               to_original: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the original's pixels that the copy's frame covers, or None when
    that is under _MIN_OVERLAP of the original."""
    height, width = original_shape
    corners = np.array([[0, 0, 1], [copy_shape[1], 0, 1], [0, copy_shape[0], 1],
                        [copy_shape[1], copy_shape[0], 1]], np.float64)
    mapped = corners @ to_original[:2].T
    x0, y0 = np.maximum(np.floor(mapped.min(axis=0)), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(mapped.max(axis=0)), (width, height)).astype(int)
    if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) < _MIN_OVERLAP * width * height:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _aligned(copy: np.ndarray, original: np.ndarray, to_original: np.ndarray,
             box: tuple[int, int, int, int], side: int,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The original's `box` and the copy mapped onto it, both side x side float32, where
    the copy covers it (its edge left out as far as the band-pass reaches), and the 3x3
    map from the original's pixels to the view's."""
    x0, y0, x1, y1 = box
    into_view = np.array([[side / (x1 - x0), 0, -x0 * side / (x1 - x0)],
                          [0, side / (y1 - y0), -y0 * side / (y1 - y0)], [0, 0, 1]])
    warp = into_view @ to_original
    # Area-reduce the copy first, as the reference is: a plain warp would alias it.
    shrink = min(1.0, float(np.sqrt(abs(np.linalg.det(warp[:2, :2])))))
    small = cv2.resize(copy, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
    warp = warp @ np.diag([copy.shape[1] / small.shape[1], copy.shape[0] / small.shape[0], 1.0])
    reference = cv2.resize(original[y0:y1, x0:x1], (side, side),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
    moved = cv2.warpAffine(small.astype(np.float32), warp[:2], (side, side),
                           flags=cv2.INTER_LINEAR)
    coverage = cv2.warpAffine(np.ones(small.shape, np.float32), warp[:2], (side, side),
                              flags=cv2.INTER_LINEAR)
    return (reference, moved, cv2.erode(coverage, np.ones((_EDGE, _EDGE), np.uint8)),
            into_view)


def _rescaled(to_original: np.ndarray, copy: tuple[np.ndarray, np.ndarray],
              original: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A map between two images' small greys as the same map between other sizes of
    them: each pair is (small, other)."""
    def scale(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        small, other = pair
        return np.diag([other.shape[1] / small.shape[1], other.shape[0] / small.shape[0], 1.0])
    return scale(original) @ to_original @ np.linalg.inv(scale(copy))


def check_affine(views: Views, first: int, second: int, mirrored: bool,
                 affine: np.ndarray, min_score: float) -> tuple[float, str]:
    """Registered detail correlation of two images related by `affine` (2x3, from the
    pixels of `first`, mirrored left to right when `mirrored`, to those of `second`), and
    a name for the edit that makes the copy from the other image.

    The image showing the content larger is the copy: its frame is mapped into the
    other's, and the part they share is compared as `check_pair` compares views, at
    SCREEN_SIDE, then at CHECK_SIDE with the detail evened out; a pair within
    SCREEN_MARGIN of `min_score` at both is scored on the finer greyscale images at
    FINE_CHECK_SIDE, evened out too. Each size starts from the map the one before
    refined, so a rough first fit (few keypoint matches) still ends aligned.
    """
    to_second = np.vstack([affine, [0.0, 0.0, 1.0]])
    if mirrored:
        width = views.greys[first].shape[1]
        to_second = to_second @ np.array([[-1.0, 0.0, width - 1.0], [0, 1, 0], [0, 0, 1]])
    copy, original = first, second
    if abs(np.linalg.det(to_second[:2, :2])) > 1.0:  # `first` shows the content smaller
        copy, original, to_second = second, first, np.linalg.inv(to_second)
    name = _affine_name(to_second[:2])
    greys = views.greys[copy], views.greys[original]
    box = _shared_box(greys[0].shape, greys[1].shape, to_second)
    if box is None:
        return 0.0, name
    for side, steps, even in ((SCREEN_SIDE, 8, False), (CHECK_SIDE, 30, True)):
        reference, moved, coverage, into_view = _aligned(*greys, to_second, box, side)
        fit = register(reference, moved, steps, coverage, even)
        if fit.score < min_score - SCREEN_MARGIN:
            return fit.score, name
        to_second = np.linalg.inv(into_view) @ np.linalg.inv(fit.warp) @ into_view @ to_second
    fine = views.fine(copy), views.fine(original)
    to_second = _rescaled(to_second, (greys[0], fine[0]), (greys[1], fine[1]))
    box = _shared_box(fine[0].shape, fine[1].shape, to_second)
    if box is None:
        return 0.0, name
    reference, moved, coverage, _ = _aligned(*fine, to_second, box, FINE_CHECK_SIDE)
    return register(reference, moved, 30, coverage, even=True).score, name
