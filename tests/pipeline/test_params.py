import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medimg.errors import ParamsError
from medimg.params import load_params


def write_params(tmp_path: Path, repo: Path, edit) -> Path:
    with (repo / "params.yaml").open() as handle:
        raw = yaml.safe_load(handle)
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repository_params_are_valid(repo: Path) -> None:
    params = load_params(repo / "params.yaml")
    assert params.classes == ["mri", "breast_histo"]
    assert params.model.name == "tf_efficientnet_lite0"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda p: p["train"].update(lr_typo=1), "unknown key 'train.lr_typo'"),
        (lambda p: p["train"].update(lrr=p["train"].pop("lr")),
         "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        (lambda p: p["train"]["augment"].update(hfilp=p["train"]["augment"].pop("hflip")),
         "unknown key 'train.augment.hfilp' (did you mean 'train.augment.hflip'?)"),
        (lambda p: p["split"].update(val=0.5, test=0.5),
         "bad values in 'split': val + test must be below 1"),
        (lambda p: p["data"].update(ignore_classes=["mri"]),
         "data.ignore_classes names listed classes ['mri']"),
        (lambda p: p["split"].update(min_per_split=0), "bad value for 'split.min_per_split'"),
        (lambda p: p.update(extra_section={}), "unknown key 'extra_section'"),
        (lambda p: p["train"].update(epochs="ten"), "bad value for 'train.epochs'"),
        (lambda p: p["train"].update(epochs=2.5), "bad value for 'train.epochs'"),
        (lambda p: p["train"].update(lr=True), "bad value for 'train.lr'"),
        (lambda p: p["split"].update(val=1.5), "bad value for 'split.val'"),
        (lambda p: p["model"].pop("name"), "missing key 'model.name'"),
        (lambda p: p["train"]["augment"].update(hflip="often"),
         "bad value for 'train.augment.hflip'"),
        (lambda p: p["train"].update(monitor="val_loss", monitor_mode="max"),
         "bad values in 'train': monitor_mode must be min for monitor val_loss"),
        (lambda p: p["train"].update(monitor="val_f1", monitor_mode="min"),
         "bad values in 'train': monitor_mode must be max for monitor val_f1"),
    ],
)
def test_bad_params_name_the_key_and_file(tmp_path, repo, edit, expected) -> None:
    path = write_params(tmp_path, repo, edit)
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_float_written_without_dot_is_accepted(tmp_path, repo) -> None:
    path = write_params(tmp_path, repo, lambda p: None)
    path.write_text(path.read_text().replace("lr: 0.0003", "lr: 1e-3"))
    assert load_params(path).train.lr == pytest.approx(1e-3)


def test_invalid_yaml_and_missing_file(tmp_path) -> None:
    broken = tmp_path / "params.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "absent.yaml")


def test_stage_stops_with_one_line(tmp_path, repo) -> None:
    write_params(tmp_path, repo, lambda p: p["split"].update(seeed=1))
    result = subprocess.run([sys.executable, str(repo / "stages" / "split.py")], cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == ("params.yaml: unknown key 'split.seeed' "
                                     "(did you mean 'split.seed'?)")


def test_every_stage_validates_params_before_any_work(repo: Path) -> None:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = repo / stage["cmd"].split()[1]
        tree = ast.parse(script.read_text())
        main = next(node for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == "main")
        first = main.body[0]
        call = first.value if isinstance(first, ast.Assign | ast.Expr) else None
        assert isinstance(call, ast.Call) and getattr(call.func, "id", "") == "load_params", (
            f"{name}: main() does not start with load_params()")
