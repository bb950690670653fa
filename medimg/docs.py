"""Generated sections of the project's Markdown files: a section sits between
`<!-- NAME:begin -->` and `<!-- NAME:end -->`, and a function of the repository root
writes what goes between them (scripts/results_table.py and scripts/reference_docs.py).
Also the few number formats those functions share."""

import json
from collections.abc import Callable
from pathlib import Path

# (begin, end, function of the repository root that writes what goes between them)
Section = tuple[str, str, Callable[[Path], str]]


def markers(name: str) -> tuple[str, str]:
    """The comments that open and close the generated section NAME."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def with_section(text: str, begin: str, end: str, body: str) -> str:
    """TEXT with what lies between BEGIN and END (each exactly once, in that order)
    replaced by BODY."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"expected one {begin} followed by one {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def update_files(root: Path, files: dict[str, list[Section]], check: bool,
                 command: str) -> int:
    """Rewrite the generated sections of FILES under ROOT, or with CHECK only compare them.
    Returns the exit status: 1, naming each file, when a file is out of date (CHECK) or a
    file or marker is missing; else 0."""
    stale = []
    for name, sections in files.items():
        path = root / name
        try:
            text = path.read_text(encoding="utf-8")
            updated = text
            for begin, end, write in sections:
                updated = with_section(updated, begin, end, write(root))
        except (OSError, ValueError) as error:
            print(f"{name}: {error}")
            return 1
        if updated != text:
            stale.append(name)
            if not check:
                path.write_text(updated, encoding="utf-8")
                print(f"rewrote {name}")
    if check and stale:
        for name in stale:
            print(f"{name} is out of date: run {command}")
        return 1
    return 0


def results_file(root: Path, name: str, folder: str = "benchmarks/results") -> dict:
    """A committed results file: FOLDER/NAME under ROOT, as JSON."""
    with (root / folder / name).open(encoding="utf-8") as handle:
        return json.load(handle)


def fmt(value: float | None) -> str:
    """A figure to four decimals, or n/a."""
    return "n/a" if value is None else f"{value:.4f}"


def interval(row: dict, name: str) -> str:
    """ROW's NAME with its interval (NAME_low, NAME_high) where it has one."""
    value, low, high = row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high")
    if value is None:
        return "n/a"
    return f"{value:.4f} ({low:.4f} to {high:.4f})" if low is not None else f"{value:.4f}"


def blank(value: object, form: str = "{}") -> str:
    """VALUE formatted, or an empty table cell when there is none."""
    return "" if value is None else form.format(value)
