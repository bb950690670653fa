"""A labels manifest (`data.labels_file`): which class each file, series or patient of a
clinical export belongs to, instead of class folders.

A CSV, UTF-8 with or without a byte-order mark, LF or CRLF line endings, with a `label`
column, one key column (`path`, `SeriesInstanceUID` or `PatientID`) and optionally
`group` (the split group) and `split` (`test` for a given test set). A `path` is relative
to data.raw_dir and names a file, or a folder whose files all take the row's label.
Every error names the row (its line in the file) and stops the stage before it writes."""

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medimg.errors import DatasetError

KEYS = ("path", "SeriesInstanceUID", "PatientID")
OPTIONAL = ("group", "split")


@dataclass(frozen=True)
class Row:
    line: int  # in the file, the header being line 1
    key: str
    label: str
    group: str
    split: str


@dataclass(frozen=True)
class Manifest:
    path: Path
    key: str  # which of KEYS the rows name
    rows: list[Row]

    def where(self, row: Row) -> str:
        return f"{self.path} line {row.line}"


def _clean_path(value: str) -> str:
    return PurePosixPath(value.replace("\\", "/")).as_posix().removeprefix("./").rstrip("/")


def read_manifest(path: Path, classes: list[str]) -> Manifest:
    """The manifest's rows, checked: known labels, one key column, no key twice with two
    labels."""
    if not path.is_file():
        raise DatasetError(f"data.labels_file: {path} does not exist")
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            table = list(csv.reader(handle))
    except UnicodeDecodeError as err:
        raise DatasetError(f"data.labels_file: {path} is not UTF-8 ({err.reason})") from err
    if not table:
        raise DatasetError(f"data.labels_file: {path} is empty")
    header = [name.strip() for name in table[0]]
    keys = [name for name in KEYS if name in header]
    if "label" not in header or len(keys) != 1:
        raise DatasetError(f"data.labels_file: {path} needs a 'label' column and exactly one "
                           f"of {list(KEYS)}; its columns are {header}")
    unknown = [name for name in header if name not in {"label", *KEYS, *OPTIONAL}]
    if unknown:
        raise DatasetError(f"data.labels_file: {path}: unknown column(s) {unknown}")
    key = keys[0]
    rows: list[Row] = []
    seen: dict[str, Row] = {}
    for line, values in enumerate(table[1:], start=2):
        if not any(value.strip() for value in values):
            continue
        if len(values) != len(header):
            raise DatasetError(f"data.labels_file: {path} line {line}: {len(values)} fields, "
                               f"the header has {len(header)}")
        cells = dict(zip(header, (value.strip() for value in values), strict=True))
        value = _clean_path(cells[key]) if key == "path" else cells[key]
        row = Row(line, value, cells["label"], cells.get("group", ""), cells.get("split", ""))
        if not value:
            raise DatasetError(f"data.labels_file: {path} line {line}: empty {key}")
        if row.label not in classes:
            raise DatasetError(f"data.labels_file: {path} line {line}: label '{row.label}' is "
                               f"not in params 'classes' {classes}")
        if row.split not in ("", "test"):
            raise DatasetError(f"data.labels_file: {path} line {line}: split '{row.split}': "
                               f"only 'test' (a given test set) or empty")
        if value in seen and seen[value].label != row.label:
            raise DatasetError(f"data.labels_file: {path} lines {seen[value].line} and {line}: "
                               f"{key} {'' if key == 'path' else '(an identifier) '}under two "
                               f"labels, '{seen[value].label}' and '{row.label}'"
                               + (f": {value}" if key == "path" else ""))
        seen.setdefault(value, row)
        rows.append(row)
    if not rows:
        raise DatasetError(f"data.labels_file: {path} has no rows")
    return Manifest(path, key, rows)


def rows_for_file(index: dict[str, list[Row]], key: str, rel: str, series: str,
                  patient: str) -> list[Row]:
    """The rows that name this file (`index`: `by_key`'s): by its path or a folder above
    it, its series or its patient, for the key column the manifest has."""
    if key == "SeriesInstanceUID":
        return index.get(series, []) if series else []
    if key == "PatientID":
        return index.get(patient, []) if patient else []
    parts = rel.split("/")
    return [row for depth in range(len(parts), 0, -1)
            for row in index.get("/".join(parts[:depth]), [])]


def by_key(manifest: Manifest) -> dict[str, list[Row]]:
    index: dict[str, list[Row]] = {}
    for row in manifest.rows:
        index.setdefault(row.key, []).append(row)
    return index
