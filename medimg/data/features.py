"""Local features that find copies cropped anywhere: ORB keypoints, an index of their
descriptors, and the pairs of images whose matches agree on one similarity transform.

A crop of 70% of each side at a random place, resized back, shares no global hash with its
original, but its corners, edges and texture are the original's, magnified. ORB describes
each keypoint by 256 intensity comparisons around it, turned to the keypoint's own angle,
so a keypoint keeps nearly the same descriptor in the copy (a median of 18 bits differ on
the MRI set; keypoints of different images differ in about 100). Each image is described
as it is and mirrored, so a copy is matched twice over, and a flipped one too.

Candidates come from an index, never from all pairs: each of a descriptor's eight 32-bit
words is a key, and a descriptor sharing a key with another image's is a match when the
whole descriptors differ in at most MATCH_BITS bits. Two images become a candidate pair
when at least MIN_VOTES matches agree on the turn between them (keypoint angles) and a
similarity transform fitted to them by RANSAC zooms or turns: a copy's matches all agree,
chance matches of similar-looking tissue do not. The transform is what the registered
check (`medimg.data.edits.check_affine`) starts from.
"""

import multiprocessing
from dataclasses import dataclass

import cv2
import numpy as np

from medimg.parallel import process_map

ORB_FEATURES = 250  # keypoints per image (per orientation)
FAST_THRESHOLD = 20  # grey levels: keeps the corners a copy keeps, scores fewer others
ORB_PATCH = 31  # ORB's own pattern size: its 256 comparisons are balanced on MRI images
ORB_LEVELS = 4  # pyramid levels 1.2 apart: zooms up to 1.2**3 = 1.73 (crops to 58%)
MATCH_BITS = 48  # of 256: copies' keypoints differ in at most about 43 (90th percentile)
MIN_VOTES = 6  # agreeing matches that make two images a candidate pair
MAX_BUCKET = 32  # a key shared by more descriptors is too common to say anything
# A copy that shows the content at its original size and unturned is the view hashes' to
# find: the neighbouring slices of a scan, which must be kept, map onto each other so too.
MIN_ZOOM = 1.02  # a crop of 98% of each side
CROP_ZOOM = 1.05  # a crop of 95%: zoomed less (and unturned), neighbouring slices look alike
MIN_TURN = 3.0  # degrees
MAX_ZOOM = 2.0  # a crop of 50% of each side
ANGLE_BIN = 30.0  # degrees: matches of one copy agree on the turn within this
_WORDS = 8  # 32-bit words in a 256-bit descriptor: one index table each
_PARALLEL_DESCRIPTORS = 1 << 18  # fewer are not worth starting processes for


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of one image and of its mirror (left to right), all in the image's own
    pixels: x, y, angle in degrees and pyramid level, whether it was found on the mirror,
    and its 32-byte descriptor."""

    points: np.ndarray  # float32 (n, 4): x, y, angle, level
    mirrored: np.ndarray  # bool (n,)
    descriptors: np.ndarray  # uint8 (n, 32)
    width: int  # of the image, for mirroring its points


def _detector() -> cv2.ORB:
    return cv2.ORB_create(nfeatures=ORB_FEATURES, scaleFactor=1.2, nlevels=ORB_LEVELS,
                          edgeThreshold=ORB_PATCH // 2 + 1, patchSize=ORB_PATCH,
                          fastThreshold=FAST_THRESHOLD)


def _points(keypoints: tuple[cv2.KeyPoint, ...], descriptors: np.ndarray | None,
            ) -> tuple[np.ndarray, np.ndarray]:
    if descriptors is None:
        return np.zeros((0, 4), np.float32), np.zeros((0, 32), np.uint8)
    angles = np.fromiter((k.angle for k in keypoints), np.float32, len(keypoints))
    levels = np.fromiter((k.octave for k in keypoints), np.float32, len(keypoints))
    return np.c_[cv2.KeyPoint_convert(keypoints), angles, levels], descriptors


def _mirror(points: np.ndarray, width: int | np.ndarray) -> np.ndarray:
    """Points (x, y, angle, level) of an image (of `width`, or one width per point) as the
    same points of its mirror."""
    x, y, angle, level = points.T
    return np.stack([width - 1 - x, y, (180.0 - angle) % 360.0, level], axis=1)


def local_features(grey: np.ndarray) -> LocalFeatures:
    """ORB keypoints of a uint8 greyscale image and of its mirror. Both describe each copy,
    so a copy is matched twice over: image to image and mirror to mirror (or, for a
    flipped copy, image to mirror both ways)."""
    orb = _detector()
    width = grey.shape[1]
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    # The mirror's keypoints are the image's, mirrored (the detector is symmetric): only
    # describing them there costs less than finding them again.
    mirrored = [cv2.KeyPoint(width - 1 - k.pt[0], k.pt[1], k.size, (180.0 - k.angle) % 360.0,
                             k.response, k.octave) for k in keypoints]
    mirrored, flipped_descriptors = orb.compute(np.ascontiguousarray(grey[:, ::-1]), mirrored)
    points, descriptors = _points(keypoints, descriptors)
    flipped_points, flipped_descriptors = _points(mirrored, flipped_descriptors)
    return LocalFeatures(np.concatenate([points, _mirror(flipped_points, width)]),
                         np.r_[np.zeros(len(points), bool), np.ones(len(flipped_points), bool)],
                         np.concatenate([descriptors, flipped_descriptors]), width)


@dataclass(frozen=True)
class Candidate:
    """Two images whose keypoint matches agree: `affine` (2x3) maps the pixels of `first`,
    mirrored left to right when `mirrored`, onto those of `second`."""

    first: int
    second: int
    mirrored: bool
    affine: np.ndarray
    votes: int

    def barely_moved(self) -> bool:
        """Zoomed by less than CROP_ZOOM and turned by less than MIN_TURN: where the
        neighbouring slices of a smooth scan also land (near the top of a head each slice
        is a little smaller than the next), so the pair is held to the view hashes' bar."""
        zoom, turn = _motion(self.affine)
        return zoom < CROP_ZOOM and turn < MIN_TURN

    def copy_first(self) -> bool:
        """Whether `first` shows the content larger: the copy, when the pair is one."""
        return abs(np.linalg.det(self.affine[:, :2])) <= 1.0


def _motion(affine: np.ndarray) -> tuple[float, float]:
    """How much a similarity transform zooms (1 or more, either way) and turns (degrees,
    0 to 180)."""
    zoom = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    turn = abs(float(np.degrees(np.arctan2(affine[1, 0], affine[0, 0]))))
    return max(zoom, 1 / max(zoom, 1e-9)), turn


_INDEXED = (np.zeros((0, 32), np.uint8), np.zeros(0, np.int64))  # what a table worker reads


def _table_matches(word: int) -> np.ndarray:
    """Pairs i * n + j (i < j) of descriptors of different images that share 32-bit word
    number `word` and differ in at most MATCH_BITS bits."""
    descriptors, owner = _INDEXED
    words, halves = descriptors.view(np.uint32), descriptors.view(np.uint64)
    order = np.argsort(words[:, word])
    keys = words[order, word]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    later = np.repeat(starts + sizes, sizes) - np.arange(len(keys)) - 1  # later in its run
    later[np.repeat(sizes > MAX_BUCKET, sizes)] = 0  # too common a key: no pairs from it
    first = np.repeat(np.arange(len(keys)), later)
    second = first + 1 + np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later)
    i, j = order[first], order[second]
    i, j = i[owner[i] != owner[j]], j[owner[i] != owner[j]]
    differing = np.bitwise_count(halves[i] ^ halves[j]).sum(axis=1, dtype=np.int32)
    i, j = i[differing <= MATCH_BITS], j[differing <= MATCH_BITS]
    return np.minimum(i, j).astype(np.int64) * len(descriptors) + np.maximum(i, j)


def _matches(descriptors: np.ndarray, owner: np.ndarray,
             workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) descriptor pairs, i < j, of different images that share a 32-bit word and
    differ in at most MATCH_BITS bits: one table per word, the tables in a pool of
    `workers` forked processes where forking is available (they read the descriptors
    from this process's memory)."""
    global _INDEXED
    _INDEXED = (descriptors, owner)
    forked = "fork" in multiprocessing.get_all_start_methods()
    if workers > 1 and forked and len(descriptors) >= _PARALLEL_DESCRIPTORS:
        found = list(process_map(_table_matches, range(_WORDS), workers=workers,
                                 mp_context=multiprocessing.get_context("fork")))
    else:
        found = [_table_matches(word) for word in range(_WORDS)]
    pairs = np.unique(np.concatenate(found))
    return pairs // len(descriptors), pairs % len(descriptors)


def candidate_pairs(features: list[LocalFeatures], known: set[tuple[int, int]] | None = None,
                    workers: int = 1) -> list[Candidate]:
    """Pairs of images whose keypoint matches agree on one turn, with or without a flip,
    other than the `known` (i < j) pairs, each with the similarity transform fitted to its
    matches; at most one per pair (the one with the most votes)."""
    owner = np.repeat(np.arange(len(features)), [len(f.descriptors) for f in features])
    if len(owner) == 0:
        return []
    return indexed_candidates(
        np.ascontiguousarray(np.concatenate([f.descriptors for f in features])),
        np.concatenate([f.points for f in features]),
        np.concatenate([f.mirrored for f in features]), owner,
        np.array([f.width for f in features]), known or set(), workers)


def indexed_candidates(descriptors: np.ndarray, points: np.ndarray, mirrored: np.ndarray,
                       owner: np.ndarray, widths: np.ndarray, known: set[tuple[int, int]],
                       workers: int = 1) -> list[Candidate]:
    """`candidate_pairs` on the images' keypoints laid end to end: descriptors (n, 32),
    points (n, 4), mirrored (n,) and owner (n,), the image each belongs to (ascending),
    and each image's width."""
    i, j = _matches(descriptors, owner, workers)
    # A match across a flip relates the first image's mirror to the second image.
    flip = mirrored[i] != mirrored[j]
    source = points[i].copy()
    source[flip] = _mirror(source[flip], widths[owner[i[flip]]])
    target = points[j]
    turn = np.rint(((target[:, 2] - source[:, 2]) % 360.0) / ANGLE_BIN).astype(np.int64)
    turn %= round(360 / ANGLE_BIN)
    first, second = owner[i].astype(np.int64), owner[j].astype(np.int64)
    cell = ((first * len(widths) + second) * 2 + flip) * 64 + turn
    order = np.argsort(cell, kind="stable")
    cells, starts, votes = np.unique(cell[order], return_index=True, return_counts=True)
    strong = np.flatnonzero(votes >= MIN_VOTES)
    ranked = strong[np.lexsort((cells[strong], -votes[strong]))]
    chosen: dict[tuple[int, int], Candidate] = {}
    for at in ranked.tolist():
        rows = order[starts[at]:starts[at] + votes[at]]
        a, b, flipped = int(first[rows[0]]), int(second[rows[0]]), bool(flip[rows[0]])
        if (a, b) in chosen or (a, b) in known:
            continue
        affine = _fit(source[rows, :2], target[rows, :2])
        if affine is not None:
            chosen[(a, b)] = Candidate(a, b, flipped, affine, int(votes[at]))
    return list(chosen.values())


def _fit(source: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """Similarity transform from source to target points by RANSAC (3 px), or None when
    fewer than MIN_VOTES matches agree with it, when it zooms by more than MAX_ZOOM, or
    when it zooms by less than MIN_ZOOM and turns by less than MIN_TURN: a neighbouring
    slice maps onto its neighbour so, and onto its mirror nearly so (a head is nearly
    symmetric); a copy only flipped or not edited is the view hashes' to find.

    The fit runs from the points showing the content larger (a crop's) to the others, so
    its 3 pixels are the original's: fitted the other way, a crop of 70% was off by 5%
    in scale and 2 degrees, too far for the registration to recover."""
    affine, inliers = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                                  ransacReprojThreshold=3.0)
    if affine is not None and abs(np.linalg.det(affine[:, :2])) > 1.0:
        back, inliers = cv2.estimateAffinePartial2D(target, source, method=cv2.RANSAC,
                                                    ransacReprojThreshold=3.0)
        affine = None if back is None else cv2.invertAffineTransform(back)
    if affine is None or int(inliers.sum()) < MIN_VOTES:
        return None
    zoom, turn = _motion(affine)
    if zoom > MAX_ZOOM or not (zoom >= MIN_ZOOM or turn >= MIN_TURN):
        return None
    return affine
