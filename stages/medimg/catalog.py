"""Walk a folder-per-class dataset, hash and decode every file, and drop duplicates.

Every file under the raw folder ends in exactly one table: kept (the catalog),
duplicate, conflict, rejected or ignored, so nothing is silently lost.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medimg.hashing import file_sha256, pixel_sha256
from medimg.images import ImageError, is_image_name, load_image

OS_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


class DatasetError(SystemExit):
    """A dataset that cannot be used at all; the message says why, in one line."""


@dataclass(frozen=True)
class Walk:
    candidates: list[tuple[str, str]]  # (relative path, class)
    ignored: list[tuple[str, str]]  # (relative path, reason)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in OS_FILES


def walk_dataset(raw_dir: Path, classes: list[str], skip: frozenset[str] = frozenset()) -> Walk:
    """List image candidates per class folder; every other file is ignored with a reason."""
    if not raw_dir.is_dir():
        raise DatasetError(f"data.raw_dir: folder {raw_dir} does not exist")
    folders = {p.name for p in raw_dir.iterdir() if p.is_dir() and not _is_hidden(p.name)}
    unknown = sorted(folders - set(classes))
    if unknown:
        raise DatasetError(f"{raw_dir}: class folder(s) {unknown} not listed in params "
                           f"'classes' {classes}")
    missing = [name for name in classes if name not in folders]
    if missing:
        raise DatasetError(f"{raw_dir}: class folder(s) {missing} from params 'classes' "
                           f"not found")
    candidates, ignored = [], []
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(raw_dir).as_posix()
        if rel in skip:
            continue
        if any(_is_hidden(part) for part in path.relative_to(raw_dir).parts):
            ignored.append((rel, "hidden or OS file"))
        elif len(path.relative_to(raw_dir).parts) == 1:
            ignored.append((rel, "outside any class folder"))
        elif not is_image_name(path):
            ignored.append((rel, "not an image file type"))
        else:
            candidates.append((rel, rel.split("/", 1)[0]))
    if not candidates:
        raise DatasetError(f"{raw_dir}: no image files found in the class folders")
    return Walk(candidates=candidates, ignored=ignored)


def describe(raw_dir: Path, rel: str, min_side: int, max_pixels: int) -> dict:
    """Hashes and properties of one file, or a `reason` when it cannot be used."""
    path = raw_dir / rel
    try:
        decoded = load_image(path, max_pixels)
    except ImageError as err:
        return {"path": rel, "reason": str(err)}
    height, width = decoded.pixels.shape[:2]
    if min(height, width) < min_side:
        return {"path": rel, "reason": f"smaller than min_side ({width}x{height} < {min_side})"}
    return {
        "path": rel,
        "sha256": file_sha256(path),
        "pixel_sha256": pixel_sha256(decoded.pixels),
        "width": width,
        "height": height,
        "mode": decoded.mode,
        "format": decoded.format,
    }


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


def _cluster(table: pd.DataFrame) -> pd.Series:
    """Cluster id per row: rows sharing a file hash or a pixel hash are one cluster."""
    links = UnionFind()
    for column in ("sha256", "pixel_sha256"):
        for key, rows in table.groupby(column).groups.items():
            for row in rows:
                links.union(f"{column}:{key}", f"row:{row}")
    return pd.Series([links.find(f"row:{row}") for row in table.index], index=table.index)


def deduplicate(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one representative per exact/pixel duplicate cluster.

    Returns (kept, removed). A cluster whose members carry different classes is removed
    whole as a label conflict. Groups of merged duplicates are joined into one group.
    """
    table = table.assign(cluster=_cluster(table), pixels=table["width"] * table["height"])
    groups = UnionFind()
    kept_rows, removed = [], []
    for _, members in table.groupby("cluster", sort=False):
        if members["class"].nunique() > 1:
            removed.append(members.assign(match="conflict", representative=""))
            continue
        ordered = members.sort_values(["pixels", "path"], ascending=[False, True])
        rep = ordered.iloc[0]
        kept_rows.append(rep.name)
        for group in members["group"]:
            groups.union(rep["group"], group)
        others = ordered.iloc[1:]
        match = (others["sha256"] == rep["sha256"]).map({True: "exact", False: "pixel"})
        removed.append(others.assign(match=match, representative=rep["path"]))
    kept = table.loc[sorted(kept_rows)].drop(columns=["cluster", "pixels"])
    kept["group"] = kept["group"].map(groups.find)
    columns = ["path", "class", "match", "representative", "sha256", "pixel_sha256"]
    removed_table = (pd.concat(removed) if removed else pd.DataFrame(columns=columns))[columns]
    return kept.reset_index(drop=True), removed_table.sort_values("path").reset_index(drop=True)
