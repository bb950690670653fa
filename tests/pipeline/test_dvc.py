"""DVC as its users use it, each promise in its own temporary git + DVC repository, with a
tiny dataset and timm's tiny test model: incremental rebuilds, the run-cache, experiments,
remotes (a local folder and an S3 server on loopback), bringing data in, and artifacts."""

import filecmp
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, save
from scripts.aggregate_experiments import experiment_records

pytestmark = pytest.mark.e2e

DVC = [sys.executable, "-m", "dvc"]


def run(args: list[str], cwd: Path, env: dict | None = None) -> str:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    full_env = {**os.environ, "PATH": path, **(env or {})}
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def git(args: list[str], cwd: Path) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd)


def ran(output: str) -> set[str]:
    """Stages that executed their command during a repro."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def restored(output: str) -> set[str]:
    return set(re.findall(r"Stage '([^']+)' is cached - skipping run", output))


def set_params(repo: Path, **changes: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_image(seed: int, label: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 120, (40, 40, 3))
    pixels[..., 0] += 120 * label  # class b is redder: learnable in one epoch
    return pixels.astype(np.uint8)


def tiny_dataset(target: Path) -> tuple[list[str], dict]:
    """Two classes of 24 small PNGs in data/tiny: the classes and the data params."""
    for index in range(24):
        save(target / "data/tiny/a" / f"a{index:02d}.png", tiny_image(index, 0))
        save(target / "data/tiny/b" / f"b{index:02d}.png", tiny_image(100 + index, 1))
    return ["a", "b"], {"raw_dir": "data/tiny", "groups_file": None}


def make_tiny_repo(target: Path,
                   dataset: Callable[[Path], tuple[list[str], dict]] = tiny_dataset) -> Path:
    """A copy of the project as a clone holds it, set up for a tiny dataset (written by
    `dataset`, tracked with `dvc add`) and timm's tiny test model: only params change."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file() and not name.startswith("metrics/"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    classes, data = dataset(target)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["classes"] = classes
    params["data"].update(data)
    params["dedup"]["workers"] = 1
    params["prepare"].update(image_size=32, workers=1)
    params["model"] = {"name": "test_efficientnet", "pretrained": "none"}
    params["train"].update(epochs=1, freeze_epochs=0, batch_size=8)
    params["evaluate"].update(bootstrap_resamples=20, gradcam_per_class=1)
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(["init", "-q"], target)
    run([*DVC, "add", "-q", data["raw_dir"]], target)
    git(["add", "-A"], target)
    git(["commit", "-qm", "tiny"], target)
    return target


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny repository after one full `dvc repro`, committed."""
    repo = make_tiny_repo(tmp_path_factory.mktemp("built"))
    output = run([*DVC, "repro"], repo)
    assert ran(output) == {"sample", "pretrained", "dedup", "split", "prepare", "train",
                           "ood", "evaluate", "export", "plots_page"}
    git(["add", "-A"], repo)
    git(["commit", "-qm", "repro"], repo)
    return repo


@pytest.fixture
def repo(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built repository, cache included."""
    copy = tmp_path / "repo"
    shutil.copytree(built, copy, symlinks=True)
    return copy


@pytest.mark.parametrize(("images", "stated"), [
    (0, "class folder(s) ['c'] hold no image files"),
    (2, "split: class 'c' has 2 images"),
])
def test_a_class_too_small_to_evaluate_stops_repro_before_a_model(tmp_path, images,
                                                                   stated) -> None:
    repo = make_tiny_repo(tmp_path)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["classes"] = ["a", "b", "c"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "data/tiny/c").mkdir()
    (repo / "data/tiny/c/notes.txt").write_text("no images yet\n")
    for index in range(images):
        save(repo / "data/tiny/c" / f"c{index}.png", tiny_image(300 + index, 1))
    run([*DVC, "add", "-q", "data/tiny"], repo)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run([*DVC, "repro"], cwd=repo, capture_output=True, text=True,
                            check=False, env={**os.environ, "PATH": path})
    assert result.returncode != 0
    said = [line for line in result.stderr.splitlines() if stated in line]
    assert len(said) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "Running stage 'train'" not in result.stdout
    assert not (repo / "models/model.safetensors").exists()


def test_second_repro_runs_nothing(repo: Path) -> None:
    output = run([*DVC, "repro"], repo)
    assert ran(output) == set()
    assert "up to date" in run([*DVC, "status"], repo)


def test_training_param_reruns_train_and_what_uses_the_model(repo: Path) -> None:
    set_params(repo, train__lr=1e-3)
    assert ran(run([*DVC, "repro"], repo)) == {"train", "ood", "evaluate", "export"}


def test_image_size_reruns_prepare_and_what_follows_only(repo: Path) -> None:
    set_params(repo, prepare__image_size=24)
    assert ran(run([*DVC, "repro"], repo)) == {"prepare", "train", "ood", "evaluate",
                                              "export"}


def test_new_raw_image_reruns_dedup_and_everything_after(repo: Path) -> None:
    save(repo / "data/tiny/a/new.png", tiny_image(999, 0))
    run([*DVC, "add", "-q", "data/tiny"], repo)
    assert ran(run([*DVC, "repro"], repo)) == {"dedup", "split", "prepare", "train",
                                              "ood", "evaluate", "export"}
    assert json.loads((repo / "metrics/dedup.json").read_text())["found"] == 49


def test_edited_stage_script_reruns_it_and_what_follows(repo: Path) -> None:
    # An edit that leaves the split's output as it was stops there; retraining gives the
    # same weights (deterministic), so export stays, but new timings in the dvclive files
    # make evaluate follow.
    for script, expected in (("split", {"split"}), ("train", {"train", "evaluate"})):
        path = repo / "stages" / f"{script}.py"
        path.write_text(path.read_text() + "\n# an edit\n")
        assert ran(run([*DVC, "repro"], repo)) == expected


@pytest.mark.dvc_features
def test_reverted_params_restore_outputs_from_the_run_cache(repo: Path) -> None:
    original = (repo / "models/model.safetensors").read_bytes()
    set_params(repo, train__lr=1e-3)
    run([*DVC, "repro"], repo)
    assert (repo / "models/model.safetensors").read_bytes() != original
    git(["checkout", "params.yaml"], repo)
    output = run([*DVC, "repro"], repo)
    assert ran(output) == set() and {"train", "ood", "evaluate", "export"} <= restored(output)
    assert (repo / "models/model.safetensors").read_bytes() == original


def learning_rates(node: object) -> list[float]:
    """Every train.lr in `dvc exp show --json` output whose row also has test metrics."""
    found = []
    if isinstance(node, dict):
        data = node.get("data") if isinstance(node.get("data"), dict) else {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data")
        metrics = (data.get("metrics") or {}).get("metrics/evaluate.json", {}).get("data")
        if params and metrics and "acc" in metrics:
            found.append(params["train"]["lr"])
        for value in node.values():
            found += learning_rates(value)
    elif isinstance(node, list):
        for value in node:
            found += learning_rates(value)
    return found


@pytest.mark.dvc_features
def test_experiments_show_baseline_and_experiment_and_queue_completes(repo: Path) -> None:
    run([*DVC, "exp", "run", "-S", "train.lr=1e-3"], repo)
    assert {3e-4, 1e-3} <= set(learning_rates(json.loads(run([*DVC, "exp", "show", "--json"],
                                                             repo))))
    # The comparison in docs/dvc.md fits a wide (240-column) terminal without a cut ("…")
    # column, as `dvc metrics show` does (tests/pipeline/test_dvc_metrics.py).
    shown = run([*DVC, "exp", "show", "--only-changed", "--no-pager"], repo, {"COLUMNS": "240"})
    assert "train.lr" in shown and "0.001" in shown and "…" not in shown, shown
    assert max(map(len, shown.splitlines())) <= 240
    run([*DVC, "exp", "run", "--queue", "-S", "train.lr=1e-4,3e-4"], repo)
    run([*DVC, "queue", "start", "-j", "1"], repo)
    deadline = time.monotonic() + 300
    status = ""
    while time.monotonic() < deadline:
        status = run([*DVC, "queue", "status"], repo)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    run([*DVC, "plots", "diff", "HEAD", "-o", str(repo.parent / "diff")], repo)
    assert (repo.parent / "diff" / "index.html").is_file()
    assert {1e-4, 3e-4, 1e-3} <= set(learning_rates(json.loads(
        run([*DVC, "exp", "show", "--json"], repo))))
    # The three finished experiments, aggregated from DVC's own records.
    table = run([sys.executable, str(REPO / "scripts/aggregate_experiments.py")], repo)
    assert "| acc | 3 |" in table and "skipped" not in table
    # Their models as one ensemble, read from DVC's cache by experiment revision.
    records, _ = experiment_records(json.loads(run([*DVC, "exp", "show", "--json"], repo)))
    members = [arg for record in records for arg in ("--rev", record["rev"])]
    run([sys.executable, str(REPO / "scripts/ensemble.py"), "models/ensemble", *members,
         "--out", "ensemble.json"], repo)
    scores = json.loads((repo / "ensemble.json").read_text())
    assert len(scores["members"]) == 3 and scores["test_images"] > 0
    assert (repo / "models/ensemble/member2/model.safetensors").is_file()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def round_trip(repo: Path, tmp_path: Path, remote: list[str], env: dict | None = None) -> None:
    """Push to the remote, clone, pull, and check the clone matches and is up to date."""
    run([*DVC, "remote", "add", "-d", *remote], repo)
    git(["add", "-A"], repo)
    git(["commit", "-qm", "remote"], repo)
    run([*DVC, "push", "-j", "4"], repo, env)
    clone = tmp_path / "clone"
    git(["clone", "-q", str(repo), str(clone)], tmp_path)
    run([*DVC, "pull", "-j", "4"], clone, env)
    for name in ("models/model.safetensors", "models/model.json", "data/split/split.csv",
                 "data/prepared/train.npy", "data/tiny/a/a00.png"):
        assert filecmp.cmp(repo / name, clone / name, shallow=False), name
    assert "up to date" in run([*DVC, "status"], clone, env)
    assert ran(run([*DVC, "repro"], clone, env)) == set()


@pytest.mark.dvc_features
def test_local_remote_push_pull_round_trip(repo: Path, tmp_path: Path) -> None:
    round_trip(repo, tmp_path, ["store", str(tmp_path / "remote")])
    # The model is declared under `artifacts:`; a registered version can be fetched by name.
    run([str(Path(sys.executable).parent / "gto"), "register", "classifier", "--version",
         "v1.0.0"], repo)
    artifact = tmp_path / "artifact.safetensors"
    run([*DVC, "artifacts", "get", str(repo), "classifier", "--rev", "v1.0.0", "-o",
         str(artifact)], tmp_path)
    assert filecmp.cmp(artifact, repo / "models/model.safetensors", shallow=False)


@pytest.mark.dvc_features
def test_s3_remote_round_trip_against_a_loopback_server(repo: Path, tmp_path: Path,
                                                       monkeypatch) -> None:
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="models")
        run([*DVC, "remote", "add", "s3store", "s3://models/study"], repo)
        run([*DVC, "remote", "modify", "s3store", "endpointurl", endpoint], repo)
        run([*DVC, "remote", "default", "s3store"], repo)
        git(["add", "-A"], repo)
        git(["commit", "-qm", "s3"], repo)
        run([*DVC, "push"], repo, env)
        listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="models")
        assert listed["KeyCount"] > 0
        clone = tmp_path / "clone"
        git(["clone", "-q", str(repo), str(clone)], tmp_path)
        run([*DVC, "pull"], clone, env)
        assert filecmp.cmp(repo / "models/model.safetensors", clone / "models/model.safetensors",
                           shallow=False)
        assert "up to date" in run([*DVC, "status"], clone, env)
        assert ran(run([*DVC, "repro"], clone, env)) == set()
    finally:
        server.stop()


@pytest.mark.dvc_features
def test_bring_data_in_with_add_and_import(repo: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    git(["init", "-q"], source)
    run([*DVC, "init", "-q"], source)
    for index in range(20):
        save(source / "scans/a" / f"s{index}.png", tiny_image(500 + index, 0))
        save(source / "scans/b" / f"t{index}.png", tiny_image(600 + index, 1))
    run([*DVC, "add", "-q", "scans"], source)
    run([*DVC, "remote", "add", "-d", "store", str(tmp_path / "source-remote")], source)
    git(["add", "-A"], source)
    git(["commit", "-qm", "scans"], source)
    run([*DVC, "push"], source)
    run([*DVC, "import", str(source), "scans", "-o", "data/imported"], repo)
    set_params(repo, data__raw_dir="data/imported")
    output = run([*DVC, "repro"], repo)
    assert {"dedup", "split", "prepare", "train", "evaluate", "export"} <= ran(output)
    assert json.loads((repo / "metrics/dedup.json").read_text())["found"] == 40
    run([*DVC, "config", "cache.type", "reflink,hardlink,symlink,copy"], repo)
    own = repo / "data/own"
    for index in range(12):
        save(own / "a" / f"o{index}.png", tiny_image(700 + index, 0))
        save(own / "b" / f"p{index}.png", tiny_image(800 + index, 1))
    run([*DVC, "add", "-q", "data/own"], repo)
    set_params(repo, data__raw_dir="data/own")
    run([*DVC, "repro"], repo)
    assert json.loads((repo / "metrics/dedup.json").read_text())["found"] == 24
    # Reflinks (where the file system has them) are not observable; the setting is.
    assert "reflink,hardlink,symlink,copy" in (repo / ".dvc/config").read_text()
    set_params(repo, evaluate__external_dir="data/imported")  # another source, scored apart
    assert ran(run([*DVC, "repro"], repo)) == {"evaluate"}
    report = json.loads((repo / "metrics/report/report.json").read_text())
    external = report["metrics"]["external"]
    assert external["n"] == 40 and external["rejected"] == 0
