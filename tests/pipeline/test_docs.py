"""The documents: README.md links every moved document, every relative link resolves, and
every generated section matches the files it is generated from."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medimg.docs import update_files
from medimg.params import flatten
from scripts import reference_docs, results_table
from scripts.reference_docs import param_sections, stages_markdown

REPO = Path(__file__).resolve().parents[2]
MOVED = [*sorted(REPO.glob("docs/*.md")), REPO / "benchmarks/README.md"]
DOCUMENTS = [REPO / "README.md", *MOVED]
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MARKER = re.compile(r"<!-- ([\w-]+):begin -->")


def prose(text: str) -> str:
    """TEXT without code blocks and code spans, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(prose(path.read_text(encoding="utf-8")))
            if not re.match(r"[a-z]+:", target)]


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    found: set[str] = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if match := re.match(r"#{1,6} (.*)", line):
            slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
            found.add(slug if slug not in found else next(
                f"{slug}-{n}" for n in range(1, 100) if f"{slug}-{n}" not in found))
    return found


def generated_sections(path: Path) -> set[str]:
    return set(MARKER.findall(path.read_text(encoding="utf-8")))


def check(script: str, root: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m scripts.SCRIPT --check --root ROOT`, as a user runs it, from the repository."""
    return subprocess.run([sys.executable, "-m", f"scripts.{script}", "--check", "--root",
                           str(root)], capture_output=True, text=True, check=False, cwd=REPO)


def check_results(root: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The results check in this process (its renderers import torch, already loaded here):
    the exit status and what it printed."""
    status = update_files(root, results_table.FILES, True, results_table.COMMAND)
    return status, capsys.readouterr().out


def test_readme_links_every_moved_document() -> None:
    linked = {(REPO / target.split("#")[0]).resolve()
              for target in relative_links(REPO / "README.md")}
    assert {path.resolve() for path in MOVED} <= linked, "link each document from README.md"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_resolves_to_a_file_and_heading(document: Path) -> None:
    for target in relative_links(document):
        file, _, anchor = target.partition("#")
        resolved = (document.parent / file).resolve() if file else document
        assert resolved.is_file(), f"{target} in {document.name}: no such file"
        if anchor:
            assert anchor in anchors(resolved), f"{target} in {document.name}: no such heading"


def test_heading_anchors_follow_github(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Results on real data\n## Loader: prepared arrays\n### `train.augment`\n"
                    "```bash\n# not a heading\n```\n## Results on real data\n")
    assert anchors(page) == {"results-on-real-data", "loader-prepared-arrays", "trainaugment",
                             "results-on-real-data-1"}


def test_stage_and_parameter_references_match_dvc_yaml_and_params() -> None:
    result = check("reference_docs")
    assert result.returncode == 0, result.stdout + result.stderr


def test_results_in_every_document_match_the_results_files() -> None:
    result = check("results_table")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_generated_section_has_its_generator() -> None:
    written: dict[str, set[str]] = {}
    for files in (results_table.FILES, reference_docs.FILES):
        for name, sections in files.items():
            written.setdefault(name, set()).update(
                begin.removeprefix("<!-- ").removesuffix(":begin -->") for begin, _, _ in sections)
    found = {str(path.relative_to(REPO)): generated_sections(path) for path in DOCUMENTS}
    assert {name: names for name, names in found.items() if names} == written


def test_every_param_key_is_in_the_reference_with_a_meaning(repo: Path) -> None:
    text = (repo / "params.yaml").read_text()
    blocks = [block for section in param_sections(text) for block in section.blocks]
    assert {key for block in blocks for key, _ in block.keys} == set(flatten(yaml.safe_load(text)))
    assert [block.keys for block in blocks if not block.comment] == []
    reference = (repo / "docs/parameters.md").read_text()
    for key in flatten(yaml.safe_load(text)):
        assert f"`{key}`" in reference


def test_stage_table_lists_every_stage_of_dvc_yaml(repo: Path) -> None:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    rows = [line for line in stages_markdown(repo).splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(stages)
    for row, stage in zip(rows, stages.values(), strict=True):
        assert f"`{stage['cmd']}`" in row


def test_params_reader_groups_keys_under_the_comment_directly_above() -> None:
    text = ("# file header\n\nseed: 1\ntrain:\n  # Batch and epochs.\n  batch_size: 2\n"
            "  epochs: 3  # inline\n\n  lr: 0.1\n  # Augmentations.\n  augment:\n"
            "    # Flip.\n    hflip: 0.5\n  resume: false\n")
    sections = {section.name: section for section in param_sections(text)}
    assert [(b.keys, b.comment) for b in sections[""].blocks] == [([("seed", "1")], [])]
    assert [(b.keys, b.comment) for b in sections["train"].blocks] == [
        ([("train.batch_size", "2"), ("train.epochs", "3")], ["Batch and epochs."]),
        ([("train.lr", "0.1")], []),
        ([("train.resume", "false")], [])]
    assert sections["train.augment"].comment == ["Augmentations."]
    assert [(b.keys, b.comment) for b in sections["train.augment"].blocks] == [
        ([("train.augment.hflip", "0.5")], ["Flip."])]


def test_params_reader_refuses_a_layout_it_cannot_read() -> None:
    with pytest.raises(ValueError):
        param_sections("classes:\n  - mri\n  - breast_histo\n")


def copy_into(root: Path, *names: str) -> None:
    for name in names:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)


def test_a_changed_param_value_makes_the_parameter_reference_out_of_date(tmp_path: Path) -> None:
    copy_into(tmp_path, "params.yaml", "dvc.yaml", "docs")
    params = tmp_path / "params.yaml"
    params.write_text(params.read_text().replace("\nseed: 42\n", "\nseed: 7\n"))
    result = check("reference_docs", tmp_path)
    assert result.returncode == 1
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["docs/parameters.md"]
    subprocess.run([sys.executable, "-m", "scripts.reference_docs", "--root", str(tmp_path)],
                   check=True, capture_output=True, cwd=REPO)
    assert "| `seed` | `7` |" in (tmp_path / "docs/parameters.md").read_text()
    assert check("reference_docs", tmp_path).returncode == 0


def copy_results(root: Path) -> None:
    """The documents and every file their results sections are generated from."""
    copy_into(root, "README.md", "docs", "benchmarks/README.md", "benchmarks/results",
              "params.yaml", "metrics/dedup.json", "metrics/split.json",
              "metrics/train.json", "metrics/evaluate.json")


def test_the_results_check_names_the_out_of_date_file(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    copy_results(tmp_path)
    study = tmp_path / "docs/real-data.md"
    study.write_text(study.read_text().replace("| a_original |", "| a_renamed |", 1))
    status, printed = check_results(tmp_path, capsys)
    assert status == 1
    assert [line.split()[0] for line in printed.splitlines()] == ["docs/real-data.md"]


def test_the_results_check_names_a_missing_marker(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    copy_results(tmp_path)
    benchmarks = tmp_path / "benchmarks/README.md"
    benchmarks.write_text(benchmarks.read_text().replace("<!-- dvc-benchmark:end -->", ""))
    status, printed = check_results(tmp_path, capsys)
    assert status == 1
    assert "benchmarks/README.md" in printed and "dvc-benchmark" in printed
