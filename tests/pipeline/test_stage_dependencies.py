"""Each stage's code dependencies in dvc.yaml are exactly the files its script imports,
directly or through other shared modules: a missing one would let `dvc repro` reuse a
stale result after that file changed, an extra one reruns the stage for nothing."""

import ast
from pathlib import Path

import yaml

from conftest import REPO

PACKAGE = "medimg"


def imported_modules(source: Path, root: Path) -> set[Path]:
    """The package files `source` imports itself: `from medimg.evaluation import plots`
    names the module plots.py, `from medimg.io import x` the module io.py."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            path = root.joinpath(*parts).with_suffix(".py")
            if parts[0] == PACKAGE and path.is_file():
                found.add(path)
                found |= package_inits(root, parts[:-1])
    return found


def package_inits(root: Path, packages: list[str]) -> set[Path]:
    """The `__init__.py` files Python runs before a module of these nested packages: each
    one that holds code is a dependency too (medimg/__init__.py pins OpenCV's kernels)."""
    inits = (root.joinpath(*packages[:depth], "__init__.py")
             for depth in range(1, len(packages) + 1))
    return {init for init in inits if init.is_file() and init.read_text().strip()}


def code_dependencies(script: Path, root: Path) -> set[Path]:
    """`script` and every shared module it reaches through imports."""
    seen, todo = set(), [script]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imported_modules(current, root) - seen)
    return seen


def undeclared_and_unused(root: Path) -> dict[str, tuple[set[str], set[str]]]:
    """For each `python stages/<name>.py` stage of root/dvc.yaml: (imported but not
    declared, declared but not imported), as paths relative to root."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    result = {}
    for name, stage in stages.items():
        script = stage["cmd"].split()[-1]
        derived = {path.relative_to(root).as_posix()
                   for path in code_dependencies(root / script, root)}
        declared = {dep for dep in stage.get("deps", []) if dep.endswith(".py")}
        result[name] = (derived - declared, declared - derived)
    return result


def test_every_stage_declares_exactly_the_code_it_imports() -> None:
    for name, (undeclared, unused) in undeclared_and_unused(REPO).items():
        assert not undeclared, f"stage {name}: imports {sorted(undeclared)}, not in dvc.yaml"
        assert not unused, f"stage {name}: dvc.yaml lists {sorted(unused)}, never imported"


def test_an_import_added_without_its_dependency_is_caught(tmp_path: Path) -> None:
    package = tmp_path / PACKAGE
    (package / "data").mkdir(parents=True)
    (package / "io.py").write_text("import json\n")
    (package / "data" / "walk.py").write_text("from medimg.io import json\n")
    (tmp_path / "stages").mkdir()
    script = tmp_path / "stages" / "report.py"
    script.write_text("from medimg.io import json\n")
    stage = {"cmd": "python stages/report.py", "deps": ["stages/report.py", "medimg/io.py"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": stage}}))
    assert undeclared_and_unused(tmp_path) == {"report": (set(), set())}

    script.write_text("from medimg.data import walk\nfrom medimg.io import json\n")  # a new import
    assert undeclared_and_unused(tmp_path) == {"report": ({"medimg/data/walk.py"}, set())}

    script.write_text("import json\n")  # both imports gone: io.py is declared for nothing
    assert undeclared_and_unused(tmp_path) == {"report": (set(), {"medimg/io.py"})}


def test_a_package_init_that_holds_code_is_a_dependency(tmp_path: Path) -> None:
    package = tmp_path / PACKAGE
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "walk.py").write_text("import json\n")
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "report.py").write_text("from medimg.data import walk\n")
    stage = {"cmd": "python stages/report.py",
             "deps": ["stages/report.py", "medimg/data/walk.py"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": stage}}))
    assert undeclared_and_unused(tmp_path) == {"report": (set(), set())}

    (package / "__init__.py").write_text("import os\nos.environ['A'] = 'b'\n")
    assert undeclared_and_unused(tmp_path) == {"report": ({"medimg/__init__.py"}, set())}
