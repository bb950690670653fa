"""Walk a folder-per-class dataset, hash and decode every file, and find duplicates.

Every file under the raw folder ends in exactly one table: kept (the catalog),
duplicate, conflict, rejected or ignored, so nothing is silently lost.
"""

import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from medimg.hashing import file_sha256, pixel_sha256
from medimg.images import ImageError, is_image_name, load_image
from medimg.perceptual import correlation, detail_correlation, near_pairs, phash, thumbnail

OS_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


class DatasetError(SystemExit):
    """A dataset that cannot be used at all; the message says why, in one line."""


@dataclass(frozen=True)
class Candidate:
    path: str  # relative to the raw folder, with forward slashes
    label_name: str  # the class folder
    origin: str  # the folders above the class folder ("Training"), or ""


@dataclass(frozen=True)
class Walk:
    candidates: list[Candidate]
    ignored: list[tuple[str, str]]  # (relative path, reason)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in OS_FILES


def _files(raw_dir: Path, ignored: list[tuple[str, str]]) -> list[str]:
    """Relative paths of all files, following each linked folder once; loops are reported."""
    seen: set[str] = set()
    found = []
    for folder, subfolders, names in os.walk(raw_dir, followlinks=True):
        real = os.path.realpath(folder)
        rel_folder = Path(folder).relative_to(raw_dir)
        if real in seen:
            ignored.append((rel_folder.as_posix(), "folder link seen before (loop or repeat)"))
            subfolders.clear()
            continue
        seen.add(real)
        # Real folders before links to them, so a file keeps its own path when it can.
        subfolders.sort(key=lambda name: (os.path.islink(os.path.join(folder, name)), name))
        found.extend((rel_folder / name).as_posix() for name in sorted(names))
    return found


def _class_folders(raw_dir: Path, class_level: int) -> set[str]:
    level = [raw_dir]
    for _ in range(class_level):
        level = [child for folder in level for child in sorted(folder.iterdir())
                 if child.is_dir() and not _is_hidden(child.name)]
    return {folder.name for folder in level}


def walk_dataset(raw_dir: Path, classes: list[str], class_level: int = 1,
                 skip: frozenset[str] = frozenset()) -> Walk:
    """List image candidates under the class folders at depth `class_level`; every other
    file is ignored with a reason."""
    if not raw_dir.is_dir():
        raise DatasetError(f"data.raw_dir: folder {raw_dir} does not exist")
    folders = _class_folders(raw_dir, class_level)
    unknown = sorted(folders - set(classes))
    if unknown:
        raise DatasetError(f"{raw_dir}: class folder(s) {unknown} not listed in params "
                           f"'classes' {classes}")
    missing = [name for name in classes if name not in folders]
    if missing:
        raise DatasetError(f"{raw_dir}: class folder(s) {missing} from params 'classes' "
                           f"not found")
    candidates: list[Candidate] = []
    ignored: list[tuple[str, str]] = []
    for rel in _files(raw_dir, ignored):
        parts = rel.split("/")
        if rel in skip:
            continue
        if any(_is_hidden(part) for part in parts):
            ignored.append((rel, "hidden or OS file"))
        elif len(parts) <= class_level:
            ignored.append((rel, "outside any class folder"))
        elif not is_image_name(Path(rel)):
            ignored.append((rel, "not an image file type"))
        else:
            origin = "/".join(parts[:class_level - 1])
            candidates.append(Candidate(rel, parts[class_level - 1], origin))
    if not candidates:
        raise DatasetError(f"{raw_dir}: no image files found in the class folders")
    return Walk(candidates=candidates, ignored=ignored)


def describe(rel: str, raw_dir: Path, min_side: int, max_pixels: int) -> dict:
    """Hashes, properties and the 32x32 thumbnail of one file, or a `reason` it is unusable."""
    path = raw_dir / rel
    try:
        decoded = load_image(path, max_pixels)
    except ImageError as err:
        return {"path": rel, "reason": str(err)}
    height, width = decoded.pixels.shape[:2]
    if min(height, width) < min_side:
        return {"path": rel, "reason": f"smaller than min_side ({width}x{height} < {min_side})"}
    thumb = thumbnail(decoded.pixels)
    return {
        "path": rel,
        "sha256": file_sha256(path),
        "pixel_sha256": pixel_sha256(decoded.pixels),
        "phash": f"{phash(thumb):016x}",
        "width": width,
        "height": height,
        "mode": decoded.mode,
        "format": decoded.format,
        "thumb": thumb,
    }


def describe_all(raw_dir: Path, paths: list[str], min_side: int, max_pixels: int,
                 workers: int) -> list[dict]:
    """`describe` every path, in a process pool when workers > 1, with a progress bar."""
    work = partial(describe, raw_dir=raw_dir, min_side=min_side, max_pixels=max_pixels)
    bar = partial(tqdm, total=len(paths), desc="dedup", unit="img", disable=None)
    if workers <= 1:
        return list(bar(map(work, paths)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, min(64, len(paths) // (workers * 8)))
        return list(bar(pool.map(work, paths, chunksize=chunk)))


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        root = self.parent.setdefault(item, item)
        while root != self.parent[root]:
            root = self.parent[root]
        self.parent[item] = root
        return root

    def union(self, a: str, b: str) -> None:
        # The smaller name becomes the root, so group ids do not depend on visit order.
        root_a, root_b = sorted((self.find(a), self.find(b)))
        self.parent[root_b] = root_a


def assign_groups(paths: pd.Series, groups_table: pd.DataFrame | None,
                  group_regex: str | None) -> tuple[pd.Series, pd.Series]:
    """Group id and its origin per path: groups file, regex, or the image alone."""
    group = paths.copy()
    source = pd.Series("image", index=paths.index)
    if group_regex:
        found = paths.str.extract(re.compile(group_regex), expand=False)
        found = found.iloc[:, 0] if isinstance(found, pd.DataFrame) else found
        matched = found.notna()
        group[matched], source[matched] = "re:" + found[matched], "regex"
    if groups_table is not None:
        lookup = groups_table.set_index("path")["group"]
        mapped = paths.map(lookup)
        listed = mapped.notna()
        group[listed], source[listed] = "meta:" + mapped[listed], "metadata"
    return group, source


@dataclass(frozen=True)
class Thresholds:
    near_hamming: int
    near_correlation: float
    prefer_origin: str | None = None  # keep copies from this origin (a test folder) first


def confirmed_pairs(hashes: np.ndarray, thumbs: np.ndarray, max_distance: int,
                    min_correlation: float, score: Callable[[np.ndarray, np.ndarray], float],
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within `max_distance` pHash bits whose thumbnails score high enough."""
    first, second = near_pairs(hashes, max_distance)
    scores = np.array([score(thumbs[i], thumbs[j]) for i, j in zip(first, second, strict=True)])
    keep = scores >= min_correlation if len(scores) else np.zeros(0, dtype=bool)
    return first[keep], second[keep], scores[keep]


def _near_representatives(candidates: np.ndarray, hashes: np.ndarray, thumbs: np.ndarray,
                          limits: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicate representative and correlation to it for each candidate row.

    `candidates` are row numbers in priority order (largest first). Each row, in that
    order, either already belongs to a group or founds one and takes in every unclaimed
    row confirmed against itself. Members are confirmed against the representative,
    never through a chain of other members.
    """
    first, second, scores = confirmed_pairs(hashes[candidates], thumbs[candidates],
                                            limits.near_hamming, limits.near_correlation,
                                            detail_correlation)
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for i, j, score in zip(first.tolist(), second.tolist(), scores.tolist(), strict=True):
        neighbours.setdefault(i, []).append((j, score))
        neighbours.setdefault(j, []).append((i, score))
    rep = np.full(len(candidates), -1)
    score_to_rep = np.ones(len(candidates))
    for position in range(len(candidates)):  # positions follow priority order
        if rep[position] >= 0:
            continue
        rep[position] = position
        for other, score in neighbours.get(position, []):
            if rep[other] < 0:
                rep[other], score_to_rep[other] = position, score
    return candidates[rep], score_to_rep


def _merge_groups(frame: pd.DataFrame, links: list[tuple[str, str]],
                  source: str) -> tuple[pd.Series, pd.Series]:
    """Join linked split groups; rows whose group grew get `source` as the group's origin."""
    groups = UnionFind()
    for a, b in links:
        groups.union(a, b)
    merged = frame["group"].map(groups.find)
    grew = frame["group"].groupby(merged).transform("nunique") > 1
    return merged, frame["group_source"].where(~grew, source)


def deduplicate(table: pd.DataFrame, thumbs: np.ndarray,
                limits: Thresholds) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one representative per duplicate group; return (kept, removed).

    Levels: exact (same file bytes), pixel (same decoded pixels), near (pHash within
    `near_hamming` bits, confirmed by thumbnail correlation). The representative is from
    `prefer_origin` if any member is, then the largest image, then the first path. A group
    whose members carry different classes is removed whole as a label conflict. Split
    groups of merged duplicates are joined.
    """
    area = (table["width"] * table["height"]).to_numpy()
    elsewhere = (table["origin"] != limits.prefer_origin).to_numpy()
    priority = np.lexsort((table["path"].to_numpy(), -area, elsewhere))
    ordered = table.iloc[priority].reset_index(drop=True)
    thumbs = thumbs[priority]
    position = pd.Series(np.arange(len(ordered)))
    exact_rep = position.groupby(ordered["sha256"]).transform("min").to_numpy()
    pixel_rep = position.groupby(ordered["pixel_sha256"]).transform("min").to_numpy()

    hashes = np.array([int(h, 16) for h in ordered["phash"]], dtype=np.uint64)
    unique = np.flatnonzero(pixel_rep == position)
    near_rep, near_score = _near_representatives(unique, hashes, thumbs, limits)
    rep, score = np.arange(len(ordered)), np.ones(len(ordered))
    rep[unique], score[unique] = near_rep, near_score
    final_rep, score = rep[pixel_rep], score[pixel_rep]  # copies follow their pixel rep

    match = np.select([position != exact_rep, position != pixel_rep, position != final_rep],
                      ["exact", "pixel", "near"], default="kept")
    paths = ordered["path"].to_numpy()
    ordered = ordered.assign(match=match, representative=paths[final_rep],
                             correlation=np.round(score, 4))
    mixed = ordered.groupby(final_rep)["class"].transform("nunique").to_numpy() > 1
    ordered.loc[mixed, "match"] = "conflict"

    clean = ~mixed
    links = list(zip(ordered["group"].to_numpy()[final_rep][clean],
                     ordered["group"].to_numpy()[clean], strict=True))
    ordered["group"], ordered["group_source"] = _merge_groups(ordered, links, "duplicate")

    kept = ordered[ordered["match"] == "kept"].drop(
        columns=["match", "representative", "correlation"])
    removed = ordered[ordered["match"] != "kept"]
    columns = ["path", "class", "origin", "match", "representative", "correlation", "phash",
               "sha256", "pixel_sha256"]
    return (kept.sort_values("path").reset_index(drop=True),
            removed[columns].sort_values("path").reset_index(drop=True))


def similarity_groups(kept: pd.DataFrame, thumbs: np.ndarray, max_distance: int,
                      min_correlation: float) -> tuple[pd.Series, pd.Series]:
    """Join the split groups of highly similar images (neighbouring slices, patches of one
    slide): they are real, distinct data, but must never straddle train and test."""
    hashes = np.array([int(h, 16) for h in kept["phash"]], dtype=np.uint64)
    first, second, _ = confirmed_pairs(hashes, thumbs, max_distance, min_correlation,
                                       correlation)
    group = kept["group"].to_numpy()
    links = list(zip(group[first], group[second], strict=True))
    return _merge_groups(kept, links, "similarity")
