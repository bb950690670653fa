"""Walk a dataset folder: every file under the raw folder becomes candidate images of a
class or an ignored entry with its reason, so nothing is silently lost.

Classes come from class folders, or from a labels manifest (`medimg.data.manifest`).
Files are images (PNG, JPEG, TIFF, ...), DICOM files (by their `.dcm` suffix or their
preamble, whatever their name), or NIfTI volumes. DICOM files are gathered into series
by SeriesInstanceUID and put in slice order; a multi-frame file is a series of its own
frames; a volume is cut into slices along `SliceChoice.plane`. Of each series or volume
the slices `SliceChoice` names are taken, the others listed as ignored."""

import os
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from medimg.data.headers import NO_IMAGE_MODALITIES, Header, read_header, slice_order
from medimg.data.images import (
    frame_path,
    is_dicom,
    is_image_name,
    is_volume_name,
    slice_path,
)
from medimg.data.manifest import Manifest, by_key, rows_for_file
from medimg.data.volumes import PLANES, nonempty, read_volume, taken_slices
from medimg.errors import DatasetError
from medimg.parallel import process_map

OS_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "dicomdir"})
NOT_TAKEN = "slice not taken (data.slice_step, data.slice_central)"


@dataclass(frozen=True)
class SliceChoice:
    """Which slices of a series or volume are taken: the central share `central`, every
    `step`-th of them; of a volume, cut along `plane`, those with at least
    `min_foreground` of foreground."""
    plane: str = "axial"
    step: int = 1
    central: float = 1.0
    min_foreground: float = 0.0


@dataclass(frozen=True)
class Candidate:
    path: str  # relative to the raw folder, with forward slashes; `#frame=K`, `#axial=K`
    label_name: str  # the class
    origin: str  # the folders above the class folder ("Training"), a manifest's split, or ""
    header: Header | None = None  # a DICOM file's: identifiers stay in memory, never written
    volume: str = ""  # the NIfTI file of a slice
    position: int | None = None  # place in its series or volume, in slice order
    manifest_group: str = ""


@dataclass(frozen=True)
class Walk:
    candidates: list[Candidate]
    ignored: list[tuple[str, str]]  # (relative path, reason)
    # Series that are taken but not whole: (SeriesInstanceUID, what is wrong); in memory.
    series_notes: list[tuple[str, str]] = field(default_factory=list)


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


def _check_class_folders(raw_dir: Path, classes: list[str], class_level: int,
                         ignore_classes: Collection[str]) -> None:
    folders = _class_folders(raw_dir, class_level)
    unknown = sorted(folders - set(classes) - set(ignore_classes))
    if unknown:
        raise DatasetError(f"{raw_dir}: class folder(s) {unknown} not listed in params "
                           f"'classes' {classes}; list them, leave them out with "
                           f"data.ignore_classes, or give data.labels_file")
    missing = [name for name in classes if name not in folders]
    if missing:
        raise DatasetError(f"{raw_dir}: class folder(s) {missing} from params 'classes' "
                           f"not found")


def _kind(path: Path) -> str | None:
    """image, dicom or volume; None for anything else."""
    if is_volume_name(path):
        return "volume"
    if path.suffix.lower() == ".dcm" or not is_image_name(path):
        try:
            return "dicom" if path.stat().st_size > 132 and is_dicom(path) else None
        except OSError:
            return None
    return "image"


def _dicom_reason(header: Header | str) -> str | None:
    """Why a DICOM file holds no image to take, or None (an unreadable header is for
    decoding to reject)."""
    if isinstance(header, str):
        return None
    if header.modality in NO_IMAGE_MODALITIES:
        return f"DICOM file holds no image (modality {header.modality})"
    if not header.has_pixels:
        return "DICOM file holds no image (no Pixel Data)"
    return None


def _series_notes(uid: str, headers: list[Header]) -> list[tuple[str, str]]:
    """What is wrong with a series that is still taken: mixed modalities, missing slices."""
    notes = []
    modalities = sorted({h.modality for h in headers})
    if len(modalities) > 1:
        notes.append((uid, f"mixed modalities {', '.join(modalities)}"))
    numbers = sorted(h.number for h in headers if h.number is not None)
    if len(numbers) == len(headers) > 1:
        missing = numbers[-1] - numbers[0] + 1 - len(set(numbers))
        if missing > 0:
            notes.append((uid, f"{missing} slice(s) missing (InstanceNumber "
                               f"{numbers[0]}..{numbers[-1]}, {len(headers)} files)"))
    return notes


def _take_series(files: list[tuple[str, Header, str, str, str]], choice: SliceChoice,
                 ignored: list[tuple[str, str]]) -> list[Candidate]:
    """One series' candidates in slice order, its frames if it is one multi-frame file."""
    if len(files) == 1 and files[0][1].frames > 1:
        rel, header, label, origin, group = files[0]
        addresses = [frame_path(rel, frame) for frame in range(header.frames)]
        rows = [(address, header, label, origin, group) for address in addresses]
    else:
        rows = [files[i] for i in slice_order([header for _, header, *_ in files])]
    taken = set(taken_slices(len(rows), choice.step, choice.central))
    candidates = []
    for position, (address, header, label, origin, group) in enumerate(rows):
        if position in taken:
            candidates.append(Candidate(address, label, origin, header=header,
                                        position=position, manifest_group=group))
        else:
            ignored.append((address, NOT_TAKEN))
    return candidates


def _take_volume(raw_dir: Path, rel: str, label: str, origin: str, group: str,
                 choice: SliceChoice, ignored: list[tuple[str, str]]) -> list[Candidate]:
    try:
        volume = read_volume(raw_dir / rel)
    except Exception as err:  # nibabel raises many kinds for a broken file
        ignored.append((rel, f"unreadable volume: {type(err).__name__}: {err}"[:200]))
        return []
    axis = PLANES.index(choice.plane)
    indices = taken_slices(volume.shape[axis], choice.step, choice.central)
    full = nonempty(volume, axis, indices, choice.min_foreground)
    untaken = volume.shape[axis] - sum(full)
    if untaken:
        ignored.append((rel, f"{untaken} of {volume.shape[axis]} {choice.plane} slices not "
                             f"taken (data.slice_step, data.slice_central, "
                             f"data.slice_min_foreground)"))
    return [Candidate(slice_path(rel, choice.plane, index), label, origin, volume=rel,
                      position=index, manifest_group=group)
            for index, keep in zip(indices, full, strict=True) if keep]


def _labels(files: list[tuple[str, str]], headers: dict[str, Header], manifest: Manifest,
            ignored: list[tuple[str, str]]) -> dict[str, tuple[str, str, str, int]]:
    """(label, origin, group, line) per file from the manifest; files it does not name are
    ignored; a file under two labels, or a row that names no file, stops the walk."""
    index, used, found = by_key(manifest), set(), {}
    for rel, _ in files:
        header = headers.get(rel)
        rows = rows_for_file(index, manifest.key, rel, header.series if header else "",
                             header.patient if header else "")
        if not rows:
            ignored.append((rel, f"not in data.labels_file ({manifest.key})"))
            continue
        if len({row.label for row in rows}) > 1:
            lines = ", ".join(str(row.line) for row in rows)
            raise DatasetError(f"data.labels_file: {manifest.path} lines {lines}: {rel} is "
                               f"under two labels")
        used.update(row.line for row in rows)
        found[rel] = (rows[0].label, rows[0].split, rows[0].group, rows[0].line)
    unused = [row for row in manifest.rows if row.line not in used]
    if unused:
        shown = ", ".join(str(row.line) for row in unused[:10])
        what = (f": {unused[0].key}" if manifest.key == "path" else "")
        raise DatasetError(f"data.labels_file: {manifest.path}: {len(unused)} row(s) name no "
                           f"file ({manifest.key}), line(s) {shown}{what}")
    return found


def _one_label_per_patient(labels: dict[str, tuple[str, str, str, int]],
                           headers: dict[str, Header], manifest: Manifest | None) -> None:
    """With data.labels_per: patient, a patient (by the headers' PatientID) whose files
    carry two labels stops the walk, naming two of its files (and their manifest rows),
    never the patient."""
    def named(rel: str) -> str:
        return f"{rel} ({manifest.path} line {labels[rel][3]})" if manifest else rel

    first: dict[str, str] = {}
    for rel, (label, *_) in labels.items():
        header = headers.get(rel)
        if header is None or not header.patient:
            continue
        seen = first.setdefault(header.patient, rel)
        if labels[seen][0] != label:
            raise DatasetError(f"data.labels_per: patient, but one patient is under two "
                               f"labels: '{labels[seen][0]}' for {named(seen)} and '{label}' "
                               f"for {named(rel)}")


def walk_dataset(raw_dir: Path, classes: list[str], class_level: int = 1,
                 skip: frozenset[str] = frozenset(), ignore_classes: Collection[str] = (),
                 manifest: Manifest | None = None, choice: SliceChoice = SliceChoice(),
                 workers: int = 1, labels_per: str = "image") -> Walk:
    """List image candidates: of the class folders at depth `class_level`, or of the
    files `manifest` labels; every other file, and every file of an `ignore_classes`
    folder, is ignored with a reason. With `labels_per` "patient", one patient's files
    under two labels are an error."""
    if not raw_dir.is_dir():
        raise DatasetError(f"data.raw_dir: folder {raw_dir} does not exist")
    if manifest is None:
        _check_class_folders(raw_dir, classes, class_level, ignore_classes)
    ignored: list[tuple[str, str]] = []
    files: list[tuple[str, str]] = []
    for rel in _files(raw_dir, ignored):
        parts = rel.split("/")
        if rel in skip:
            continue
        if any(_is_hidden(part) for part in parts):
            ignored.append((rel, "hidden or OS file"))
        elif manifest is None and len(parts) <= class_level:
            ignored.append((rel, "outside any class folder"))
        elif manifest is None and parts[class_level - 1] in ignore_classes:
            ignored.append((rel, "class folder in data.ignore_classes"))
        elif (kind := _kind(raw_dir / rel)) is None:
            ignored.append((rel, "not an image file type"))
        else:
            files.append((rel, kind))
    dicoms = [rel for rel, kind in files if kind == "dicom"]
    headers: dict[str, Header] = {}
    unreadable: set[str] = set()
    for rel, header in zip(dicoms, process_map(read_header, [raw_dir / r for r in dicoms],
                                               workers=workers, chunksize=64), strict=True):
        reason = _dicom_reason(header)
        if isinstance(header, str):
            unreadable.add(rel)  # decoding rejects it, with its own reason
        elif reason is None:
            headers[rel] = header
        else:
            ignored.append((rel, reason))
    files = [(rel, "image" if rel in unreadable else kind) for rel, kind in files
             if kind != "dicom" or rel in headers or rel in unreadable]
    if manifest is None:
        labels = {rel: (rel.split("/")[class_level - 1],
                        "/".join(rel.split("/")[:class_level - 1]), "", 0) for rel, _ in files}
    else:
        labels = _labels(files, headers, manifest, ignored)
    if labels_per == "patient":
        _one_label_per_patient(labels, headers, manifest)
    candidates: list[Candidate] = []
    series: dict[str, list[tuple[str, Header, str, str, str]]] = defaultdict(list)
    for rel, kind in files:
        if rel not in labels:
            continue
        label, origin, group, _ = labels[rel]
        if kind == "image":
            candidates.append(Candidate(rel, label, origin, manifest_group=group))
        elif kind == "volume":
            candidates.extend(_take_volume(raw_dir, rel, label, origin, group, choice, ignored))
        else:
            header = headers[rel]
            key = header.series if header.frames == 1 and header.series else rel
            series[key].append((rel, header, label, origin, group))
    notes: list[tuple[str, str]] = []
    for key, members in series.items():
        candidates.extend(_take_series(members, choice, ignored))
        notes.extend(_series_notes(key, [member[1] for member in members]))
    if not candidates:
        raise DatasetError(f"{raw_dir}: no image files found"
                           + (" in the class folders" if manifest is None else
                              f" that {manifest.path} labels"))
    found = Counter(candidate.label_name for candidate in candidates)
    empty = [name for name in classes if not found[name]]
    if empty:
        raise DatasetError(f"{raw_dir}: {'class folder(s)' if manifest is None else 'class(es)'} "
                           f"{empty} hold no image files; images per class: {dict(found)}")
    return Walk(candidates=candidates, ignored=ignored, series_notes=notes)

