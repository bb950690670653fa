"""Walk a folder-per-class dataset: every file under the raw folder becomes a candidate
image of a class or an ignored entry with its reason, so nothing is silently lost."""

import os
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from medimg.data.images import dicom_frame_count, frame_path, is_image_name
from medimg.errors import DatasetError

OS_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})


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


def _image_paths(raw_dir: Path, rel: str) -> list[str]:
    """A file's image paths: each frame of a multi-frame DICOM is an image of its own."""
    if not rel.lower().endswith(".dcm"):
        return [rel]
    frames = dicom_frame_count(raw_dir / rel)
    return [rel] if frames == 1 else [frame_path(rel, frame) for frame in range(frames)]


def walk_dataset(raw_dir: Path, classes: list[str], class_level: int = 1,
                 skip: frozenset[str] = frozenset(), ignore_classes: Collection[str] = ()) -> Walk:
    """List image candidates under the class folders at depth `class_level`; every other
    file, and every file of an `ignore_classes` folder, is ignored with a reason."""
    if not raw_dir.is_dir():
        raise DatasetError(f"data.raw_dir: folder {raw_dir} does not exist")
    folders = _class_folders(raw_dir, class_level)
    unknown = sorted(folders - set(classes) - set(ignore_classes))
    if unknown:
        raise DatasetError(f"{raw_dir}: class folder(s) {unknown} not listed in params "
                           f"'classes' {classes}; list them, or leave them out with "
                           f"data.ignore_classes")
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
        elif parts[class_level - 1] in ignore_classes:
            ignored.append((rel, "class folder in data.ignore_classes"))
        elif not is_image_name(Path(rel)):
            ignored.append((rel, "not an image file type"))
        else:
            origin = "/".join(parts[:class_level - 1])
            candidates.extend(Candidate(path, parts[class_level - 1], origin)
                              for path in _image_paths(raw_dir, rel))
    if not candidates:
        raise DatasetError(f"{raw_dir}: no image files found in the class folders")
    found = Counter(candidate.label_name for candidate in candidates)
    empty = [name for name in classes if not found[name]]
    if empty:
        raise DatasetError(f"{raw_dir}: class folder(s) {empty} hold no image files; "
                           f"images per class: {dict(found)}")
    return Walk(candidates=candidates, ignored=ignored)
