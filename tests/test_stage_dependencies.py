"""Each stage's code dependencies in dvc.yaml are exactly the files its script imports,
directly or through other shared modules: a missing one would let `dvc repro` reuse a
stale result after that file changed, an extra one reruns the stage for nothing."""

import ast
from pathlib import Path

import yaml

from conftest import REPO

PACKAGE = "medimg"


def imported_modules(source: Path, stages_dir: Path) -> set[Path]:
    """The shared-package files `source` imports itself."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from medimg import plots` names modules; `from medimg.io import x` a module.
            names = ([f"{node.module}.{alias.name}" for alias in node.names]
                     if node.module == PACKAGE else [node.module])
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                found.add(stages_dir.joinpath(*name.split(".")).with_suffix(".py"))
    return found


def code_dependencies(script: Path, stages_dir: Path) -> set[Path]:
    """`script` and every shared module it reaches through imports."""
    seen, todo = set(), [script]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imported_modules(current, stages_dir) - seen)
    return seen


def undeclared_and_unused(root: Path) -> dict[str, tuple[set[str], set[str]]]:
    """For each `python stages/<name>.py` stage of root/dvc.yaml: (imported but not
    declared, declared but not imported), as paths relative to root."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    result = {}
    for name, stage in stages.items():
        script = stage["cmd"].split()[-1]
        derived = {path.relative_to(root).as_posix()
                   for path in code_dependencies(root / script, root / "stages")}
        declared = {dep for dep in stage.get("deps", []) if dep.endswith(".py")}
        result[name] = (derived - declared, declared - derived)
    return result


def test_every_stage_declares_exactly_the_code_it_imports() -> None:
    for name, (undeclared, unused) in undeclared_and_unused(REPO).items():
        assert not undeclared, f"stage {name}: imports {sorted(undeclared)}, not in dvc.yaml"
        assert not unused, f"stage {name}: dvc.yaml lists {sorted(unused)}, never imported"


def test_an_import_added_without_its_dependency_is_caught(tmp_path: Path) -> None:
    package = tmp_path / "stages" / PACKAGE
    package.mkdir(parents=True)
    (package / "io.py").write_text("import json\n")
    (package / "walk.py").write_text("from medimg.io import json\n")
    script = tmp_path / "stages" / "report.py"
    script.write_text("from medimg.io import json\n")
    stage = {"cmd": "python stages/report.py", "deps": ["stages/report.py", "stages/medimg/io.py"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": stage}}))
    assert undeclared_and_unused(tmp_path) == {"report": (set(), set())}

    script.write_text("from medimg import walk\nfrom medimg.io import json\n")  # a new import
    assert undeclared_and_unused(tmp_path) == {"report": ({"stages/medimg/walk.py"}, set())}

    script.write_text("import json\n")  # both imports gone: io.py is declared for nothing
    assert undeclared_and_unused(tmp_path) == {"report": (set(), {"stages/medimg/io.py"})}
