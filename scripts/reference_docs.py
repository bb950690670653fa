"""Write the reference parts of the docs from the files they describe, so no key, value or
stage is typed by hand.

    python -m scripts.reference_docs          # rewrite the generated sections
    python -m scripts.reference_docs --check  # exit 1, naming each out-of-date file

docs/parameters.md: every key of params.yaml with its value as written there and its
meaning, taken from the comment lines directly above it. Keys that follow one another with
no comment or blank line between them share that comment and one row.
docs/pipeline.md: the stage table of dvc.yaml (command, code, data, params, outputs).
"""

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medimg.docs import Section, markers, update_files
from medimg.params import flatten

PARAMETERS_BEGIN, PARAMETERS_END = markers("parameters")
STAGES_BEGIN, STAGES_END = markers("stages")
SHARED = "Shared keys"
KEY = re.compile(r"(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?: +(?P<value>.*))?$")


@dataclass
class Block:
    """Keys of params.yaml that share the comment above the first of them."""

    section: str  # dotted name of the mapping they are in; "" for the top level
    comment: list[str]
    keys: list[tuple[str, str]] = field(default_factory=list)  # (dotted name, value)


@dataclass
class ParamSection:
    """A mapping of params.yaml (the top level too) with the comment above its name."""

    name: str
    comment: list[str]
    blocks: list[Block] = field(default_factory=list)


def param_sections(text: str) -> list[ParamSection]:
    """The mappings of a params file with their key blocks, in file order. Raises
    ValueError when the line reading disagrees with YAML's (a layout it does not know)."""
    sections = {"": ParamSection("", [])}
    comment: list[str] = []
    parents: list[tuple[int, str]] = []  # (indent, name) of the enclosing mappings
    block: Block | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comment, block = [], None
            continue
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            block = None
            continue
        match = KEY.match(line)
        if match is None:
            raise ValueError(f"params: cannot read the line {line!r}")
        indent, value = len(match["indent"]), (match["value"] or "").split(" #")[0].strip()
        while parents and parents[-1][0] >= indent:
            parents.pop()
        parent = ".".join(name for _, name in parents)
        name = f"{parent}.{match['key']}" if parent else match["key"]
        if not value:
            sections[name] = ParamSection(name, comment)
            parents.append((indent, match["key"]))
            comment, block = [], None
            continue
        if block is None or comment or block.section != parent:
            block = Block(parent, comment)
            sections[parent].blocks.append(block)
            comment = []
        block.keys.append((name, value))
    read = {key: yaml.safe_load(value) for section in sections.values()
            for block in section.blocks for key, value in block.keys}
    if read != flatten(yaml.safe_load(text) or {}):
        raise ValueError("params: the keys read line by line differ from YAML's")
    return list(sections.values())


def cell(text: str) -> str:
    """TEXT for a table cell: pipes escaped everywhere, and outside code spans `*` and
    `<`, which Markdown would read as emphasis or HTML."""
    parts = text.replace("|", "\\|").split("`")
    for index in range(0, len(parts), 2):
        parts[index] = re.sub(r"([*<])", r"\\\1", parts[index])
    return "`".join(parts)


def parameters_markdown(root: Path) -> str:
    """One table per mapping of params.yaml: key, value, meaning."""
    lines: list[str] = []
    for section in param_sections((root / "params.yaml").read_text(encoding="utf-8")):
        if not section.blocks:
            continue
        lines += ["", f"### `{section.name}`" if section.name else f"### {SHARED}", ""]
        if section.comment:
            lines += [" ".join(section.comment), ""]
        lines += ["| key | value | meaning |", "|---|---|---|"]
        for block in section.blocks:
            keys = ", ".join(f"`{name}`" for name, _ in block.keys)
            values = ", ".join(f"`{cell(value)}`" for _, value in block.keys)
            lines.append(f"| {keys} | {values} | {cell(' '.join(block.comment))} |")
    return "\n".join(lines[1:])


def code_files(deps: list[str]) -> str:
    """The stage's scripts, with the package's modules by name (data/walk, io, ...)."""
    scripts = [f"`{dep}`" for dep in deps if dep.endswith(".py")
               and not dep.startswith("medimg/")]
    shared = sorted(dep.removeprefix("medimg/").removesuffix(".py") for dep in deps
                    if dep.startswith("medimg/"))
    if shared:
        scripts.append("`medimg/`: " + ", ".join(shared))
    return "; ".join(scripts)


def spans(items: list[str]) -> str:
    return ", ".join(f"`{item}`" for item in items)


def entries(items: list) -> list[str]:
    """Paths of a dvc.yaml list whose entries are paths or {path: options}."""
    return [next(iter(item)) if isinstance(item, dict) else item for item in items]


def stages_markdown(root: Path) -> str:
    """The stage table of dvc.yaml and its artifacts."""
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    lines = ["| stage | command | code | data and other inputs | params | outputs | "
             "metrics, plots |", "|---|---|---|---|---|---|---|"]
    for name, stage in pipeline["stages"].items():
        deps = stage.get("deps", [])
        data = [dep for dep in deps if not dep.endswith(".py")]
        params = entries(stage.get("params", []))
        shown = entries(stage.get("metrics", [])) + entries(stage.get("plots", []))
        lines.append(f"| `{name}` | `{stage['cmd']}` | {code_files(deps)} | {spans(data)} | "
                     f"{spans(params)} | {spans(entries(stage.get('outs', [])))} | "
                     f"{spans(shown)} |")
    for name, artifact in pipeline.get("artifacts", {}).items():
        lines += ["", f"Artifact `{name}` ({artifact['type']}): `{artifact['path']}`, "
                  f"{artifact['desc']}."]
    return "\n".join(lines)


FILES: dict[str, list[Section]] = {
    "docs/parameters.md": [(PARAMETERS_BEGIN, PARAMETERS_END, parameters_markdown)],
    "docs/pipeline.md": [(STAGES_BEGIN, STAGES_END, stages_markdown)],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, do not write")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    return update_files(args.root, FILES, args.check, "python -m scripts.reference_docs")


if __name__ == "__main__":
    sys.exit(main())
