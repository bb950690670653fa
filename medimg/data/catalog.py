"""Hash and decode every file of a walked dataset (`medimg.data.walk`), and find duplicates.

Every file under the raw folder ends in exactly one table: kept (the catalog),
duplicate, conflict, rejected or ignored, so nothing is silently lost.
"""

import multiprocessing
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from medimg.data.edits import (
    FINE_SIDE,
    FRAME,
    ORIENTATIONS,
    PLAIN,
    QUERY_VIEWS,
    TURNED_HAMMING,
    ViewHashes,
    Views,
    check_affine,
    check_pair,
    reduce_grey,
    view_hashes,
)
from medimg.data.features import Candidate, LocalFeatures, candidate_pairs, local_features
from medimg.data.hashing import file_sha256, pixel_sha256
from medimg.data.images import ImageError, check_min_side, load_image, split_address
from medimg.data.perceptual import (
    THUMB_SIZE,
    Details,
    luma,
    near_pairs,
    near_pairs_between,
    phash,
    phash_text,
    phash_values,
    thumbnail,
)
from medimg.data.similar import similar_pairs
from medimg.parallel import process_map


def describe(rel: str, raw_dir: Path, min_side: int, max_pixels: int) -> dict:
    """Hashes, properties, the 64x64 thumbnail, the small greyscale image, its view hashes
    and local features of one file, or a `reason` it is unusable."""
    path = raw_dir / rel
    try:
        decoded = load_image(path, max_pixels)
        check_min_side(decoded.pixels, min_side)
    except ImageError as err:
        return {"path": rel, "reason": str(err)}
    height, width = decoded.pixels.shape[:2]
    full = luma(decoded.pixels)
    grey = reduce_grey(full)
    thumb = thumbnail(grey if min(grey.shape) >= THUMB_SIZE else full)  # area of an area
    return {
        "path": rel,
        "sha256": file_sha256(path),
        "pixel_sha256": pixel_sha256(decoded.pixels),
        "phash": phash_text(phash(thumb)),
        "width": width,
        "height": height,
        "mode": decoded.mode,
        "format": decoded.format,
        "thumb": thumb,
        "grey": grey,
        "views": view_hashes(grey),
        "features": local_features(grey),
    }


def describe_all(raw_dir: Path, paths: list[str], min_side: int, max_pixels: int,
                 workers: int) -> list[dict]:
    """`describe` every path, in a process pool when workers > 1, with a progress bar."""
    work = partial(describe, raw_dir=raw_dir, min_side=min_side, max_pixels=max_pixels)
    bar = partial(tqdm, total=len(paths), desc="dedup", unit="img", disable=None)
    chunk = max(1, min(64, len(paths) // (max(workers, 1) * 8)))
    return list(bar(process_map(work, paths, workers=workers, chunksize=chunk)))


class UnionFind:
    """Joined items (group names, or row numbers); the smallest of each set is its root."""

    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, item: str | int) -> str | int:
        root = self.parent.setdefault(item, item)
        while root != self.parent[root]:
            root = self.parent[root]
        self.parent[item] = root
        return root

    def union(self, a: str | int, b: str | int) -> None:
        # The smaller name becomes the root, so group ids do not depend on visit order.
        root_a, root_b = sorted((self.find(a), self.find(b)))
        self.parent[root_b] = root_a


def assign_groups(paths: pd.Series, data_groups: pd.DataFrame,
                  groups_table: pd.DataFrame | None, group_regex: str | None,
                  pseudonyms: Callable[[str, str], str]) -> tuple[pd.Series, pd.Series]:
    """Group id and its origin per path, the first found of: the groups file (a frame or
    slice takes its file's row), the manifest's `group` column, the data's own groups
    (`data_groups`: `group` and `group_source` per path from headers or volumes, "" where
    none), `group_regex`, and the image alone. Every id but an image's own path is a
    pseudonym."""
    group = paths.copy()
    source = pd.Series("image", index=paths.index)
    if group_regex:
        found = paths.str.extract(re.compile(group_regex), expand=False)
        found = found.iloc[:, 0] if isinstance(found, pd.DataFrame) else found
        matched = found.notna()
        group[matched] = found[matched].map(lambda value: pseudonyms("group", value))
        source[matched] = "regex"
    for column, name in (("group", None), ("manifest_group", "manifest")):
        given = data_groups[column].to_numpy() != ""
        group[given] = (data_groups[column][given] if name is None else
                        data_groups[column][given].map(lambda value: pseudonyms("group", value)))
        source[given] = data_groups["group_source"][given] if name is None else name
    if groups_table is not None:
        lookup = groups_table.set_index("path")["group"]
        mapped = paths.map(lambda path: split_address(path)[0].as_posix()).map(lookup)
        listed = mapped.notna()
        group[listed] = mapped[listed].map(lambda value: pseudonyms("group", value))
        source[listed] = "metadata"
    return group, source


@dataclass(frozen=True)
class Thresholds:
    near_hamming: int
    near_correlation: float
    edit_hamming: int
    edit_correlation: float
    crop_correlation: float
    prefer_origin: str | None = None  # keep copies from this origin (a test folder) first


@dataclass(frozen=True)
class Pairs:
    """Confirmed duplicate pairs: `first` is an edited copy of `second` by `edit`."""
    first: np.ndarray
    second: np.ndarray
    score: np.ndarray
    edit: np.ndarray  # object: the edit's name, 'none' for a plain near duplicate


@dataclass(frozen=True)
class Pictures:
    """What the edited-copy search compares of each image, in one order: the small
    greyscale image, its view hashes and local features, its path, and how to load it as
    a finer greyscale image (the local-feature check confirms on that)."""

    greys: list[np.ndarray]
    views: list[ViewHashes]
    features: list[LocalFeatures]
    paths: list[str]
    load_fine: Callable[[str], np.ndarray]

    def take(self, rows: Iterable[int]) -> "Pictures":
        rows = list(rows)
        return Pictures([self.greys[i] for i in rows], [self.views[i] for i in rows],
                        [self.features[i] for i in rows], [self.paths[i] for i in rows],
                        self.load_fine)


def fine_grey(raw_dir: Path, max_pixels: int, path: str) -> np.ndarray:
    """The file's greyscale image area-reduced to FINE_SIDE on its longer side (a JPEG
    decoded at a reduced scale that keeps at least that: a third of the time)."""
    decoded = load_image(raw_dir / path, max_pixels, draft=FINE_SIDE)
    return reduce_grey(luma(decoded.pixels), FINE_SIDE)


def confirmed_pairs(hashes: np.ndarray, thumbs: np.ndarray, max_distance: int,
                    min_correlation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within `max_distance` pHash bits whose thumbnails' fine detail correlates at
    least `min_correlation` (identical thumbnails score 1), with their scores."""
    first, second = near_pairs(hashes, max_distance)
    rows, where = np.unique(np.r_[first, second], return_inverse=True)
    details = Details.of(thumbs[rows])
    at_first, at_second = where[:len(first)], where[len(first):]
    scores = np.minimum(details.pair_correlations(at_first, at_second), 1.0)
    flat = np.flatnonzero(details.blank[at_first] | details.blank[at_second])
    scores[flat] = (thumbs[first[flat]] == thumbs[second[flat]]).all(axis=(1, 2))
    keep = scores >= min_correlation
    return first[keep], second[keep], scores[keep]


_VIEWS = Views([], [], list)  # the images a check worker reads


def _share_views(views: Views) -> None:
    global _VIEWS
    _VIEWS = views


Hypothesis = tuple[int, int, int, int] | Candidate


def _fine(load: Callable[[str], np.ndarray], paths: list[str], image: int) -> np.ndarray:
    return load(paths[image])


def _bar(hypothesis: Hypothesis, min_score: float, crop_score: float) -> float:
    """The score a hypothesis must reach: `crop_score` for a local-feature candidate that
    zooms or turns, `min_score` for a view hypothesis and for a candidate barely moved."""
    local = isinstance(hypothesis, Candidate) and not hypothesis.barely_moved()
    return crop_score if local else min_score


def _check(hypotheses: list[Hypothesis], min_score: float, crop_score: float,
           ) -> list[tuple[float, str]]:
    return [check_affine(_VIEWS, h.first, h.second, h.mirrored, h.affine,
                         _bar(h, min_score, crop_score))
            if isinstance(h, Candidate) else check_pair(_VIEWS, *h, min_score)
            for h in hypotheses]


def check_all(pictures: Pictures, hypotheses: list[Hypothesis], min_score: float,
              crop_score: float, workers: int) -> list[tuple[float, str]]:
    """`check_pair` for each (copy, query kind, original, view code) and `check_affine`
    for each local-feature Candidate, in a process pool when workers > 1 and there is
    enough to do; each worker takes contiguous shares, so an image's views are made once
    there. Forked workers read the images from this process's memory instead of receiving
    a copy."""
    _share_views(Views(pictures.greys, [v.share for v in pictures.views],
                       partial(_fine, pictures.load_fine, pictures.paths)))
    if workers <= 1 or len(hypotheses) < 256:
        return _check(hypotheses, min_score, crop_score)
    share = -(-len(hypotheses) // (4 * workers))
    chunks = [hypotheses[i:i + share] for i in range(0, len(hypotheses), share)]
    forked = "fork" in multiprocessing.get_all_start_methods()
    start = ({"mp_context": multiprocessing.get_context("fork")} if forked else
             {"initializer": _share_views, "initargs": (_VIEWS,)})
    done = process_map(_check, chunks, [min_score] * len(chunks), [crop_score] * len(chunks),
                       workers=workers, **start)
    return [result for chunk in done for result in chunk]


def edited_pairs(pictures: Pictures, limits: "Thresholds", known: set[tuple[int, int]],
                 workers: int = 1, series: np.ndarray | None = None) -> Pairs:
    """Pairs proven to be edited copies, other than the `known` (i < j) ones and the
    slices of one series (`_apart`).

    Candidates come from two indexes, never from all pairs. View hashes: an image's
    unturned foreground or frame hash within `edit_hamming` bits of any view hash of
    another image; a turned or flipped view within TURNED_HAMMING bits only, since a turn
    changes nothing else. Frame against unturned frame is the near-duplicate check's own
    case and is left to it. Local features (`medimg.data.features`): keypoint matches that
    agree on one zooming transform, for crops anywhere and copies edited twice. Each
    unordered pair is checked with its closest view (registered, `edit_correlation`) and
    with its local transform (`check_affine`, `crop_correlation`, or `edit_correlation`
    for a transform that barely moves: `Candidate.barely_moved`); the view's result comes
    first.
    """
    views, max_distance = pictures.views, limits.edit_hamming
    owners_q = np.repeat(np.arange(len(views)), [len(v.query) for v in views])
    kinds = np.concatenate([np.arange(len(v.query)) for v in views])
    owners_e = np.repeat(np.arange(len(views)), [len(v.index) for v in views])
    hashes_q = np.concatenate([v.query for v in views])
    hashes_e = np.concatenate([v.index for v in views])
    codes = np.concatenate([v.code for v in views])
    at_q, at_e = near_pairs_between(hashes_q, hashes_e, max_distance, workers)
    distance = np.bitwise_count(hashes_q[at_q] ^ hashes_e[at_e])
    frames = (np.asarray(QUERY_VIEWS)[kinds[at_q]] == FRAME) & (codes[at_e] == PLAIN)
    loose_turns = (codes[at_e] % len(ORIENTATIONS) != 0) & (distance > TURNED_HAMMING)
    keep = ((owners_q[at_q] != owners_e[at_e]) & ~frames & ~loose_turns
            & _apart(series, owners_q[at_q], owners_e[at_e]))
    at_q, at_e, distance = at_q[keep], at_e[keep], distance[keep]
    copy, original = owners_q[at_q], owners_e[at_e]
    pair = np.minimum(copy, original) * len(views) + np.maximum(copy, original)
    order = np.lexsort((codes[at_e], distance, pair))
    first_of_pair = np.r_[True, pair[order][1:] != pair[order][:-1]][:len(order)]
    hypotheses: list[Hypothesis] = [
        (int(copy[at]), int(kinds[at_q[at]]), int(original[at]), int(codes[at_e[at]]))
        for at in order[first_of_pair]
        if (min(copy[at], original[at]), max(copy[at], original[at])) not in known]
    local = candidate_pairs(pictures.features, known, workers)
    apart = _apart(series, np.array([c.first for c in local], dtype=np.int64),
                   np.array([c.second for c in local], dtype=np.int64))
    hypotheses += [candidate for candidate, keep in zip(local, apart, strict=True) if keep]
    checked = check_all(pictures, hypotheses, limits.edit_correlation,
                        limits.crop_correlation, workers)
    found: dict[tuple[int, int], tuple[int, int, float, str]] = {}
    for hypothesis, (score, edit) in zip(hypotheses, checked, strict=True):
        local = isinstance(hypothesis, Candidate)
        i, j = (hypothesis.first, hypothesis.second) if local else (hypothesis[0], hypothesis[2])
        if local and not hypothesis.copy_first():
            i, j = j, i  # check_affine names the edit from the image showing more
        if score >= _bar(hypothesis, limits.edit_correlation, limits.crop_correlation):
            found.setdefault((min(i, j), max(i, j)), (i, j, score, edit))
    columns = list(zip(*found.values(), strict=True)) if found else [(), (), (), ()]
    return Pairs(np.array(columns[0], dtype=np.int64), np.array(columns[1], dtype=np.int64),
                 np.array(columns[2], dtype=np.float64), np.array(columns[3], dtype=object))


_INVERSE = {"rot90": "rot270", "rot270": "rot90"}


def _reversed(edit: str) -> str:
    """The same edit seen from the other image: turns undone, crop and pad stay named."""
    parts = edit.split(" ")
    parts = [_INVERSE.get(part, part) for part in parts]
    if "rotate" in parts:
        at = parts.index("rotate") + 1
        parts[at] = f"{-float(parts[at]):.0f}"
    return " ".join(parts)


def _apart(series: np.ndarray | None, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Which pairs are not two slices of one series or volume (`series`, "" for an image
    of its own): only those can be copies."""
    if series is None:
        return np.ones(len(first), dtype=bool)
    return (series[first] == "") | (series[first] != series[second])


def duplicate_pairs(hashes: np.ndarray, thumbs: np.ndarray, pictures: Pictures,
                    limits: Thresholds, workers: int = 1,
                    series: np.ndarray | None = None) -> Pairs:
    """Near duplicates (pHash candidates confirmed on the thumbnails' detail) and edited
    copies (view-hash candidates confirmed by registration). Two slices of one series
    are never copies of each other: they are different acquisitions, and in one split
    group anyway."""
    first, second, scores = confirmed_pairs(hashes, thumbs, limits.near_hamming,
                                            limits.near_correlation)
    apart = _apart(series, first, second)
    first, second, scores = first[apart], second[apart], scores[apart]
    known = set(zip(first.tolist(), second.tolist(), strict=True))
    edited = edited_pairs(pictures, limits, known, workers, series)
    return Pairs(np.r_[first, edited.first], np.r_[second, edited.second],
                 np.r_[scores, edited.score],
                 np.r_[np.full(len(first), "none", dtype=object), edited.edit])


def _near_representatives(candidates: np.ndarray, hashes: np.ndarray, thumbs: np.ndarray,
                          pictures: Pictures, limits: Thresholds, workers: int,
                          series: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate representative, score against it and edit for each candidate row.

    `candidates` are row numbers in priority order (largest first). Each row, in that
    order, either already belongs to a group or founds one and takes in every unclaimed
    row confirmed against itself. Members are confirmed against the representative,
    never through a chain of other members. `series` names each row's series or
    volume (`duplicate_pairs`).
    """
    pairs = duplicate_pairs(hashes[candidates], thumbs[candidates],
                            pictures.take(candidates), limits, workers, series[candidates])
    neighbours: dict[int, list[tuple[int, float, str]]] = {}
    for i, j, score, edit in zip(pairs.first.tolist(), pairs.second.tolist(),
                                 pairs.score.tolist(), pairs.edit.tolist(), strict=True):
        neighbours.setdefault(j, []).append((i, score, edit))  # i is j edited
        neighbours.setdefault(i, []).append((j, score, _reversed(edit)))
    rep = np.full(len(candidates), -1)
    score_to_rep = np.ones(len(candidates))
    edit_from_rep = np.full(len(candidates), "", dtype=object)
    for position in range(len(candidates)):  # positions follow priority order
        if rep[position] >= 0:
            continue
        rep[position] = position
        for other, score, edit in neighbours.get(position, []):
            if rep[other] < 0:
                rep[other], score_to_rep[other], edit_from_rep[other] = position, score, edit
    return candidates[rep], score_to_rep, edit_from_rep


def _text_column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A column of DICOM pseudonyms, all "" where the table has none (no DICOM input)."""
    return frame[name] if name in frame else pd.Series("", index=frame.index)


def _first_members(count: int, keys: list[pd.Series]) -> np.ndarray:
    """For each of `count` rows, the first row it is joined to, rows being joined when they
    share a value of any key (a missing value joins nothing)."""
    joined = UnionFind()
    for key in keys:
        members = pd.Series(np.arange(count)).groupby(key.to_numpy(), dropna=True).indices
        for rows in members.values():
            for row in rows[1:].tolist():
                joined.union(int(rows[0]), row)
    return np.array([joined.find(row) for row in range(count)])


def _merge_groups(frame: pd.DataFrame, links: list[tuple[str, str]],
                  source: str) -> tuple[pd.Series, pd.Series]:
    """Join linked split groups; rows whose group grew get `source` as the group's origin."""
    groups = UnionFind()
    for a, b in links:
        groups.union(a, b)
    merged = frame["group"].map(groups.find)
    grew = frame["group"].groupby(merged).transform("nunique") > 1
    return merged, frame["group_source"].where(~grew, source)


def deduplicate(table: pd.DataFrame, thumbs: np.ndarray, pictures: Pictures,
                limits: Thresholds, workers: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one representative per duplicate group; return (kept, removed).

    Levels: exact (same file bytes), pixel (same decoded pixels), near (pHash within
    `near_hamming` bits, confirmed by thumbnail correlation; or an edited copy: rotated,
    flipped, cropped, padded or captioned, confirmed by registration, with the edit
    named in the `edit` column). Rows with one DICOM SOPInstanceUID (`instance`, a
    pseudonym; "" where none) are one image however their pixels are encoded: `instance`
    duplicates. The representative is from
    `prefer_origin` if any member is, then the largest image, then the first path. A group
    whose members carry different classes is removed whole as a label conflict. Split
    groups of merged duplicates are joined.
    """
    area = (table["width"] * table["height"]).to_numpy()
    elsewhere = (table["origin"] != limits.prefer_origin).to_numpy()
    priority = np.lexsort((table["path"].to_numpy(), -area, elsewhere))
    ordered = table.iloc[priority].reset_index(drop=True)
    thumbs = thumbs[priority]
    pictures = pictures.take(priority)
    position = pd.Series(np.arange(len(ordered)))
    exact_rep = position.groupby(ordered["sha256"]).transform("min").to_numpy()
    same_pixels = position.groupby(ordered["pixel_sha256"]).transform("min").to_numpy()
    instance = _text_column(ordered, "instance")
    pixel_rep = _first_members(len(ordered), [ordered["pixel_sha256"],
                                              instance.where(instance != "")])

    hashes = phash_values(ordered["phash"])
    unique = np.flatnonzero(pixel_rep == position)
    near_rep, near_score, near_edit = _near_representatives(
        unique, hashes, thumbs, pictures, limits, workers,
        _text_column(ordered, "series").to_numpy())
    rep, score = np.arange(len(ordered)), np.ones(len(ordered))
    edit = np.full(len(ordered), "", dtype=object)
    rep[unique], score[unique], edit[unique] = near_rep, near_score, near_edit
    final_rep, score = rep[pixel_rep], score[pixel_rep]  # copies follow their pixel rep
    edit = np.where(position != pixel_rep, "", edit[pixel_rep])

    match = np.select([position != exact_rep, position != same_pixels,
                       position != pixel_rep, position != final_rep],
                      ["exact", "pixel", "instance", "near"], default="kept")
    paths = ordered["path"].to_numpy()
    ordered = ordered.assign(match=match, representative=paths[final_rep],
                             correlation=np.round(score, 4), edit=edit)
    mixed = ordered.groupby(final_rep)["class"].transform("nunique").to_numpy() > 1
    ordered.loc[mixed, "match"] = "conflict"

    clean = ~mixed
    links = list(zip(ordered["group"].to_numpy()[final_rep][clean],
                     ordered["group"].to_numpy()[clean], strict=True))
    ordered["group"], ordered["group_source"] = _merge_groups(ordered, links, "duplicate")

    kept = ordered[ordered["match"] == "kept"].drop(
        columns=["match", "representative", "correlation", "edit"])
    removed = ordered[ordered["match"] != "kept"]
    columns = ["path", "class", "origin", "match", "representative", "edit", "correlation",
               "phash", "sha256", "pixel_sha256"]
    return (kept.sort_values("path").reset_index(drop=True),
            removed[columns].sort_values("path").reset_index(drop=True))


def restore_origin(images: pd.DataFrame, kept: pd.DataFrame, removed: pd.DataFrame,
                   origin: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`deduplicate`'s (kept, removed) with every removed image of `origin` put back: the
    copies inside a test folder and its label conflicts. `test_copy` names what each
    restored image is (exact, pixel, near, conflict), empty for the others. Copies from
    other origins stay removed; `deduplicate` already prefers `origin` as representative,
    so no image of `origin` lost its place to one from elsewhere."""
    back = removed[removed["origin"] == origin]
    restored = images[images["path"].isin(back["path"])].merge(
        back[["path", "match"]].rename(columns={"match": "test_copy"}), on="path")
    kept = pd.concat([kept.assign(test_copy=""), restored], ignore_index=True)
    return (kept.sort_values("path").reset_index(drop=True),
            removed[removed["origin"] != origin].reset_index(drop=True))


def similarity_clusters(hashes: np.ndarray, thumbs: np.ndarray, max_distance: int,
                        min_correlation: float, min_linkage: float,
                        far_distance: int | None = None, far_correlation: float | None = None,
                        ) -> np.ndarray:
    """Cluster number per image (the smallest member's row) by average linkage.

    Edges are pairs within `max_distance` pHash bits whose fine detail correlates at
    least `min_correlation` (neighbouring slices of one scan share their detail, other
    patients' similar slices do not), and pairs further apart, up to `far_distance` bits,
    whose correlation reaches a bar that rises evenly from `min_correlation` to
    `far_correlation` (`medimg.data.similar.correlation_needed`): neighbouring slices
    often differ in 12 to 16 pHash bits, and each bit more makes many more other
    patients' slices candidates, so those need more shared detail. Without
    `far_distance` only the first rule applies.
    Strongest edges first, two clusters merge only when the mean detail correlation over
    all their member pairs reaches `min_linkage`, so one chance resemblance cannot chain
    two scans together.
    """
    first, second, scores, details, rows = similar_pairs(
        hashes, thumbs, max_distance, min_correlation,
        max_distance if far_distance is None else far_distance,
        min_correlation if far_correlation is None else far_correlation)
    cluster = np.arange(len(thumbs))
    members: dict[int, list[int]] = {}
    for at in np.argsort(-scores, kind="stable"):
        a, b = cluster[first[at]], cluster[second[at]]
        if a == b:
            continue
        group_a, group_b = members.get(a, [a]), members.get(b, [b])
        linkage = details.block(np.searchsorted(rows, group_a), np.searchsorted(rows, group_b))
        if linkage.mean() < min_linkage:
            continue
        keep, drop = min(a, b), max(a, b)
        members[keep] = group_a + group_b
        members.pop(drop, None)
        cluster[members[keep]] = keep
    return cluster


def similarity_groups(kept: pd.DataFrame, thumbs: np.ndarray, max_distance: int,
                      min_correlation: float, min_linkage: float,
                      far_distance: int | None = None, far_correlation: float | None = None,
                      ) -> tuple[pd.Series, pd.Series]:
    """Join the split groups of highly similar images (neighbouring slices, patches of one
    slide): they are real, distinct data, but must never straddle train and test.
    The thresholds are `similarity_clusters`'."""
    hashes = phash_values(kept["phash"])
    cluster = similarity_clusters(hashes, thumbs, max_distance, min_correlation, min_linkage,
                                  far_distance, far_correlation)
    group = kept["group"].to_numpy()
    links = list(zip(group[cluster], group, strict=True))
    return _merge_groups(kept, links, "similarity")


def similarity_report(kept: pd.DataFrame) -> dict:
    """How many similarity groups there are, their sizes, and how many span classes (a
    scan has one diagnosis, so such a group is a false join or a label conflict)."""
    joined = kept[kept["group_source"] == "similarity"]
    sizes = joined.groupby("group").size()
    classes = joined.groupby("group")["class"].nunique()
    bins = {"2": (2, 2), "3-5": (3, 5), "6-10": (6, 10), "11-20": (11, 20), "21+": (21, None)}
    return {
        "groups": len(sizes),
        "images": int(sizes.sum()),
        "largest": int(sizes.max()) if len(sizes) else 0,
        "sizes": {name: int(((sizes >= low) & (sizes <= (high or sizes.max()))).sum())
                  for name, (low, high) in bins.items()},
        "cross_class": int((classes > 1).sum()),
    }
