import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import Dataset

from conftest import REPO
from medimg.params import TrainParams, load_params
from medimg.training.models import create_model
from medimg.training.trainer import (
    Best,
    Interrupted,
    Trainer,
    compute_loss,
    fingerprint,
    loss_function,
    project_sources,
    seed_everything,
    warmup_cosine,
)

TINY = "test_efficientnet"


class TinySet(Dataset):
    def __init__(self, count: int, num_classes: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.labels = np.arange(count) % num_classes
        noise = rng.integers(0, 160, (count, 32, 32, 3))
        shift = 90 * self.labels[:, None, None, None] // max(num_classes - 1, 1)
        self.images = torch.from_numpy((noise + shift).astype(np.uint8))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def settings(**changes) -> TrainParams:
    base = load_params(REPO / "params.yaml").train
    defaults = {"batch_size": 8, "epochs": 3, "freeze_epochs": 1, "lr": 1e-2, "patience": 5,
                "device": "cpu", "num_workers": 0}
    return base.model_copy(update={**defaults, **changes})


def make_loop(num_classes: int = 2, state_dir: Path | None = None, stop=lambda: False,
              **changes) -> Trainer:
    seed_everything(0)
    model = create_model(TINY, "none", num_classes)
    train = settings(**changes)
    run = fingerprint(train.model_dump(exclude={"resume"}), [], model)
    return Trainer(model, TinySet(32, num_classes, 1), TinySet(16, num_classes, 2),
                   train, seed=0, num_classes=num_classes, state_dir=state_dir,
                   stop_requested=stop, fingerprint=run)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_frozen_stage_changes_only_the_head() -> None:
    loop = make_loop()
    before = snapshot(loop.model)
    loop.train_epoch(0, frozen=True)
    after = loop.model.state_dict()
    head = {f"classifier.{name}" for name, _ in loop.model.get_classifier().named_parameters()}
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == head
    assert any("running_mean" in key for key in before)  # BN statistics exist and stayed


def test_full_stage_changes_the_backbone() -> None:
    loop = make_loop()
    before = snapshot(loop.model)
    loop.train_epoch(0, frozen=False)
    assert not torch.equal(before["conv_stem.weight"], loop.model.state_dict()["conv_stem.weight"])
    assert not torch.equal(before["bn1.running_mean"], loop.model.state_dict()["bn1.running_mean"])


def test_four_classes_train_with_cross_entropy() -> None:
    loop = make_loop(num_classes=4, epochs=1, freeze_epochs=0)
    assert isinstance(loop.criterion, torch.nn.CrossEntropyLoss)
    logs = []
    loop.fit(on_epoch=logs.append)
    assert len(logs) == 1 and np.isfinite(logs[0].train_loss)
    assert logs[0].val["n"] == 16 and logs[0].val["roc_auc"] is not None


def test_best_checkpoint_is_the_best_epoch() -> None:
    loop = make_loop(epochs=4)
    logs, states = [], []

    def record(log) -> None:
        logs.append(log)
        states.append(snapshot(loop.model))

    best = loop.fit(on_epoch=record)
    ranked = sorted(logs, key=lambda log: (-log.val["f1_macro"], log.val["loss"]))
    assert best.epoch == ranked[0].epoch
    for key, value in states[best.epoch].items():
        assert torch.equal(best.state[key], value)


def test_early_stopping_after_patience_epochs_without_improvement() -> None:
    model = torch.nn.Linear(1, 1)
    best = Best(mode="max")
    f1_by_epoch = [0.5, 0.7, 0.6, 0.7, 0.65, 0.9, 0.95]
    seen = []
    for epoch, f1 in enumerate(f1_by_epoch):
        if best.stale(epoch, patience=3):
            break
        seen.append(epoch)
        best.update(epoch, f1, loss=1.0, model=model)
    assert seen == [0, 1, 2, 3, 4]  # best at 1; 2, 3, 4 bring nothing; stop before 5
    assert best.epoch == 1 and best.value == pytest.approx(0.7)
    loss_best = Best(mode="min")
    loss_best.update(0, 0.5, 0.5, model)
    assert loss_best.update(1, 0.4, 0.4, model) and not loss_best.update(2, 0.6, 0.1, model)


def test_biases_and_batch_norm_get_no_weight_decay_and_the_head_its_own_lr() -> None:
    trainer = make_loop(lr=1e-2, backbone_lr_scale=0.1, weight_decay=0.05)
    head = {id(p) for p in trainer.model.get_classifier().parameters()}
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    grouped = [id(p) for group in trainer.optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(names)  # every parameter exactly once
    for group in trainer.optimizer.param_groups:
        for parameter in group["params"]:
            plain = parameter.ndim <= 1  # biases, batch-norm scales and shifts
            assert group["weight_decay"] == (0.0 if plain else 0.05), names[id(parameter)]
            assert group["name"] == ("head" if id(parameter) in head else "backbone")
            assert group["lr"] == pytest.approx(1e-2 if id(parameter) in head else 1e-3)
    assert any(".bn" in names[id(p)] for g in trainer.optimizer.param_groups
               if g["weight_decay"] == 0.0 for p in g["params"])


def test_same_seed_runs_give_identical_weights() -> None:
    first = make_loop(epochs=2)
    first.fit()
    second = make_loop(epochs=2)
    second.fit()
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path) -> None:
    whole = make_loop(epochs=3)
    whole.fit()
    calls = {"n": 0}

    def stop_in_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 4 + 2  # 4 batches an epoch: stop after two batches of epoch 1

    interrupted = make_loop(epochs=3, state_dir=tmp_path, stop=stop_in_epoch_two)
    with pytest.raises(Interrupted):
        interrupted.fit()
    resumed = make_loop(epochs=3, state_dir=tmp_path)
    assert resumed.load_state() == "resumed" and resumed.start_epoch == 1
    resumed.fit()
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.best.epoch == whole.best.epoch


def test_resume_with_changed_params_starts_afresh(tmp_path) -> None:
    calls = {"n": 0}

    def stop_in_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 4 + 2

    with pytest.raises(Interrupted):
        make_loop(epochs=3, state_dir=tmp_path, stop=stop_in_epoch_two).fit()
    changed = make_loop(epochs=3, state_dir=tmp_path, lr=3e-3)
    assert changed.load_state() == "other run" and changed.start_epoch == 0
    changed.fit()
    fresh = make_loop(epochs=3, lr=3e-3)
    fresh.fit()
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(value, changed.model.state_dict()[key]), key


def test_fingerprint_follows_settings_data_and_starting_weights(tmp_path) -> None:
    data = tmp_path / "train.npy"
    np.save(data, np.zeros(4))
    model = create_model(TINY, "none", 2)
    base = fingerprint({"lr": 1e-3}, [data], model)
    assert fingerprint({"lr": 1e-3}, [data], model) == base
    assert fingerprint({"lr": 2e-3}, [data], model) != base
    with torch.no_grad():
        model.get_classifier().bias.add_(1.0)
    assert fingerprint({"lr": 1e-3}, [data], model) != base
    np.save(data, np.ones(4))
    assert fingerprint({"lr": 1e-3}, [data], create_model(TINY, "none", 2)) != base


def test_fingerprint_covers_the_project_code_that_runs() -> None:
    sources = {path.relative_to(REPO).as_posix() for path in project_sources()}
    assert {"medimg/training/trainer.py", "medimg/training/models.py",
            "medimg/params.py"} <= sources
    assert all(name.startswith(("medimg/", "stages/")) for name in sources)


def test_class_weights_and_schedule() -> None:
    binary = loss_function(2, np.array([0, 0, 0, 1]))
    assert float(binary.pos_weight) == pytest.approx(3.0)
    multi = loss_function(3, np.array([0, 0, 1, 2, 2, 2]))
    assert multi.weight.tolist() == pytest.approx([1.0, 2.0, 2 / 3])
    factor = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [round(factor(s), 3) for s in (0, 1, 2, 7, 10)] == [0.5, 1.0, 1.0, 0.309, 0.0]


def test_label_smoothing_moves_the_best_probability_off_certainty() -> None:
    """Smoothed by s, a true label's loss is least at probability 1 - s/2 with two classes
    (one logit) and 1 - s + s/K with K classes, not at certainty."""
    def best_probability(criterion: torch.nn.Module, classes: int) -> float:
        logit = torch.zeros(1, 1 if classes == 2 else classes, requires_grad=True)
        optimiser = torch.optim.SGD([logit], lr=1.0)
        for _ in range(500):
            optimiser.zero_grad()
            compute_loss(criterion, logit, torch.tensor([1])).backward()
            optimiser.step()
        scores = logit.detach()
        return float(torch.sigmoid(scores[0, 0]) if classes == 2 else scores.softmax(1)[0, 1])

    assert best_probability(loss_function(2, label_smoothing=0.2), 2) == pytest.approx(0.9, 1e-3)
    assert best_probability(loss_function(4, label_smoothing=0.2), 4) == pytest.approx(0.85, 1e-3)
    assert best_probability(loss_function(2), 2) > 0.99


def write_tiny_project(folder: Path) -> None:
    with (REPO / "params.yaml").open() as handle:
        params = yaml.safe_load(handle)
    params["model"] = {"name": TINY, "pretrained": "none"}
    params["prepare"]["image_size"] = 32
    params["train"].update(epochs=2, freeze_epochs=1, batch_size=4, device="cpu")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = folder / "data/prepared"
    prepared.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", 16), ("val", 8)):
        labels = np.arange(count) % 2
        pixels = rng.integers(0, 100, (count, 32, 32, 3)) + labels[:, None, None, None] * 120
        np.save(prepared / f"{name}.npy", pixels.astype(np.uint8))
        pd.DataFrame({"path": [f"{name}{i}.png" for i in range(count)],
                      "label": labels}).to_csv(prepared / f"{name}.csv", index=False)


def test_two_process_gloo_run_trains_and_writes_once(tmp_path) -> None:
    write_tiny_project(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         str(REPO / "stages" / "train.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("train: best epoch") == 1
    assert result.stdout.count("epoch 1 full") == 1
    config = json.loads((tmp_path / "models/model.json").read_text())
    assert config["model"] == TINY and config["best_epoch"] in (0, 1)
    steps = pd.read_csv(tmp_path / "metrics/train/plots/metrics/train/loss.tsv", sep="\t")
    assert steps["step"].tolist() == [0, 1]


def test_sigterm_stops_cleanly_and_resume_finishes(tmp_path) -> None:
    write_tiny_project(tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"].update(epochs=30, patience=30)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    train = [sys.executable, str(REPO / "stages" / "train.py")]
    state = tmp_path / "models/last/state.pt"
    with subprocess.Popen(train, cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 120
        while not state.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "rerun with train.resume: true" in err
    assert not (tmp_path / "models/model.safetensors").exists()
    assert not (tmp_path / "metrics/train.json").exists()  # no figures of a partial run
    saved = torch.load(state, weights_only=True)["epoch"]
    assert saved < 29
    assert f"epochs 0 to {saved} are saved in models/last" in err
    params["train"].update(resume=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming after epoch {saved}" in result.stdout
    assert f"epoch {saved + 1} full" in result.stdout and f"epoch {saved} full" not in result.stdout
    assert (tmp_path / "models/model.safetensors").exists()
    history = pd.read_csv(tmp_path / "metrics/train/plots/metrics/train/loss.tsv", sep="\t")
    assert history["step"].tolist() == list(range(30))  # earlier epochs replayed
    report = json.loads((tmp_path / "metrics/report/train.json").read_text())
    assert report["epochs_run"] == 30 and not report["stopped_early"]
    seconds = pd.read_csv(tmp_path / "metrics/train/plots/metrics/epoch_seconds.tsv", sep="\t")
    assert report["training_seconds"] == pytest.approx(seconds["epoch_seconds"].sum(), abs=0.1)
    assert json.loads((tmp_path / "metrics/train.json").read_text()) == {
        "best_epoch": report["best_epoch"], "best": round(report["best_value"], 4)}
    assert not state.exists()  # a completed run leaves nothing to resume
    again = subprocess.run(train, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert "holds no state; starting afresh" in again.stdout


def test_resume_after_a_params_change_says_so_and_starts_afresh(tmp_path) -> None:
    write_tiny_project(tmp_path)
    state = tmp_path / "models/last/state.pt"
    state.parent.mkdir(parents=True)
    torch.save({"fingerprint": "another run", "epoch": 0}, state)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"].update(resume=True, epochs=1, freeze_epochs=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "train.py")], cwd=tmp_path,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "holds the state of another run" in result.stdout
    assert "epoch 0 full" in result.stdout and not state.exists()


class SlowSet(TinySet):
    """TinySet whose items take `delay` seconds each to load."""

    def __init__(self, count: int, delay: float) -> None:
        super().__init__(count, 2, 1)
        self.delay = delay

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(self.delay)
        return super().__getitem__(index)


def test_data_wait_is_measured_and_logged() -> None:
    seed_everything(0)
    loop = Trainer(create_model(TINY, "none", 2), SlowSet(32, 0.01), TinySet(8, 2, 2),
                settings(epochs=1, freeze_epochs=0), seed=0, num_classes=2)
    logs = []
    loop.fit(on_epoch=logs.append)
    log = logs[0]
    # 32 items at 10 ms each: at least 0.32 s of the epoch was spent waiting for data.
    assert 0.3 <= log.data_wait_seconds <= log.seconds
    assert 0.0 < loop.first_batch_seconds <= log.data_wait_seconds
    assert log.metrics()["data_wait_share"] == pytest.approx(log.data_wait_share, abs=1e-4)
    assert 0.0 < log.data_wait_share <= 1.0


def test_collective_tensors_go_where_the_backend_moves_them(monkeypatch) -> None:
    import torch.distributed as dist

    from medimg.devices import collective_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    assert collective_device() == torch.device("cuda", 3)  # NCCL rejects CPU tensors
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert collective_device() == torch.device("cpu")


def test_gpu_augment_matches_the_identity_and_flips() -> None:
    from medimg.training.gpu_augment import GpuAugment

    aug = load_params(REPO / "params.yaml").train.augment
    off = aug.model_copy(update={"hflip": 0.0, "vflip": 0.0, "rotate_p": 0.0,
                                 "crop_scale_min": 1.0, "brightness_contrast_p": 0.0,
                                 "noise_p": 0.0, "motion_blur_p": 0.0, "gaussian_blur_p": 0.0})
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3),
                                                                dtype=np.uint8))
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    expected = ((pixels.permute(0, 3, 1, 2).float() / 255
                 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    cpu = torch.device("cpu")
    same = GpuAugment(24, mean, std, off, cpu, ratio=(1.0, 1.0))(pixels)
    assert same.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(same, expected, atol=1e-4)
    flipped = GpuAugment(24, mean, std, off.model_copy(update={"hflip": 1.0}), cpu,
                         ratio=(1.0, 1.0))(pixels)
    assert torch.allclose(flipped, expected.flip(3), atol=1e-4)
    full = GpuAugment(16, mean, std, aug, cpu, seed=1)(pixels)
    again = GpuAugment(16, mean, std, aug, cpu, seed=1)(pixels)
    assert full.shape == (4, 3, 16, 16) and torch.isfinite(full).all()
    assert torch.equal(full, again)


def test_train_benchmark_measures_the_limits_on_the_cpu(tmp_path) -> None:
    out = tmp_path / "train.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/train_benchmark.py"), "--model", TINY,
         "--size", "32", "--images", "32", "--batch-size", "8", "--workers", "1", "--extras",
         "--configs", "fp32", "bf16_channels_last", "--loader-workers", "0",
         "--loader-opencv-threads", "1", "--sweep-batches", "4", "--ceiling-steps", "2",
         "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads(out.read_text())
    fp32, bf16 = bench["runs"]
    assert bench["command"].startswith("python benchmarks/train_benchmark.py --model")
    for run in (fp32, bf16):
        assert run["images_per_second"] > 0 and 0 <= run["data_wait_share"] <= 1
        assert run["gpu_only_images_per_second"] > 0
    assert "gpu_augment_images_per_second" not in fp32
    assert bf16["gpu_augment_images_per_second"] > 0
    assert set(bf16["gpu_only_by_batch"]) == {"4"}
    plain, opencv = bench["loader"]
    assert plain["workers"] == 0 and plain["images_per_second"] > 0
    assert opencv["workers"] == 1 and opencv["opencv_threads_per_worker"] == 1


def test_the_fingerprint_covers_every_param_the_train_stage_declares() -> None:
    import train as train_stage

    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["params"]
    settings = train_stage.run_settings(load_params(REPO / "params.yaml"))
    nested = ("prepare", "dedup")  # sections of which the stage reads some keys
    covered = {key for key in settings if key not in nested} | {
        f"{section}.{key}" for section in nested for key in settings[section]}
    assert covered == set(declared)
    assert "resume" not in settings["train"]
