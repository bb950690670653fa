"""The training loop: two-stage transfer learning, warm-up and cosine schedule, early
stopping on a monitored metric, resumable state, and DistributedDataParallel."""

import copy
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import timm
import torch
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from medimg.data.hashing import file_sha256
from medimg.devices import autocast, peak_memory_gb, rank_zero_decides
from medimg.evaluation.metrics import classification_metrics
from medimg.inference import Classifier, TorchBackend, normalise
from medimg.io import atomic_path
from medimg.params import MONITORED, TrainParams
from medimg.training.models import Normalisation, normalisation, probabilities

STATE_FILE = "state.pt"
CPU = torch.device("cpu")
# The project's own code: the package and the stage scripts (not the .venv beside them).
SOURCES = (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[2] / "stages")


class Interrupted(Exception):
    """Training stopped by a signal; the last completed epoch is saved."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def reseed_epoch(seed: int, epoch: int, dataset: Dataset, generator: torch.Generator) -> None:
    """Every random draw of an epoch follows from (seed, epoch) alone, so a run resumed at
    any epoch continues exactly as an uninterrupted one."""
    epoch_seed = seed * 1000 + epoch
    torch.manual_seed(epoch_seed)
    generator.manual_seed(epoch_seed)
    random.seed(epoch_seed)
    np.random.seed(epoch_seed)
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(epoch_seed)


def seed_worker(worker_id: int) -> None:
    """Loader workers: seed Python, NumPy and the augmentations from torch's worker seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def project_sources() -> list[Path]:
    """Source files of every loaded module of this project (the stage script included)."""
    loaded = {Path(module.__file__).resolve() for module in list(sys.modules.values())
              if getattr(module, "__file__", None)}
    return sorted(path for path in loaded
                  if any(path.is_relative_to(folder) for folder in SOURCES))


def fingerprint(settings: dict, data_files: Iterable[Path], model: nn.Module) -> str:
    """What saved training state must match to be resumed: the settings that shape training,
    the data, the model's starting weights, the code that runs and the library versions.
    State from any other run is not a continuation of this one."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in data_files:
        digest.update(file_sha256(path).encode())
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    for path in project_sources():
        digest.update(path.read_bytes())
    digest.update(f"torch {torch.__version__} timm {timm.__version__}".encode())
    return digest.hexdigest()


def timed(batches: Iterable) -> Iterator[tuple[float, Any]]:
    """(seconds it took to arrive, item) for each item of `batches`: the time the loop
    stood waiting for data. On CUDA the host runs ahead of the device until its queue is
    full, so this stays near 0 unless the loader cannot keep up."""
    iterator = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield time.perf_counter() - start, item


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze everything but the classifier head."""
    head = set(map(id, model.get_classifier().parameters()))
    for parameter in model.parameters():
        parameter.requires_grad = not frozen or id(parameter) in head


def train_mode(model: nn.Module, frozen: bool) -> None:
    # A frozen backbone must also keep its batch-norm statistics: eval mode for all but
    # the head, which has no batch norm of its own.
    if frozen:
        model.eval()
        model.get_classifier().train()
    else:
        model.train()


class BinaryLoss(nn.BCEWithLogitsLoss):
    """BCE on the one logit of a two-class model; label smoothing pulls the targets
    towards 1/2 as CrossEntropyLoss's pulls them towards 1/K."""

    def __init__(self, pos_weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(pos_weight=pos_weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = labels.float() * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        return super().forward(logits[:, 0].float(), target)


def loss_function(num_classes: int, labels: np.ndarray | None = None,
                  label_smoothing: float = 0.0) -> nn.Module:
    """BCE on one logit for two classes, cross-entropy for more; with `labels`, weighted
    by inverse class frequency."""
    if labels is None:
        return (BinaryLoss(label_smoothing=label_smoothing) if num_classes == 2
                else nn.CrossEntropyLoss(label_smoothing=label_smoothing))
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if num_classes == 2:
        return BinaryLoss(torch.tensor(counts[0] / max(counts[1], 1.0)), label_smoothing)
    weights = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    return nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32),
                               label_smoothing=label_smoothing)


def compute_loss(criterion: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if isinstance(criterion, BinaryLoss):
        return criterion(logits, labels)
    return criterion(logits.float(), labels)


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float,
                 weight_decay: float) -> list[dict]:
    """AdamW groups: timm's split, which spares biases and normalisation weights from weight
    decay (decay would pull batch norm's scales towards zero), crossed with backbone and
    head, whose learning rates differ by `backbone_lr_scale`."""
    head = set(map(id, model.get_classifier().parameters()))
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()  # as timm
    groups = []
    for group in param_groups_weight_decay(model, weight_decay, no_weight_decay_list=exempt):
        for part, scale in (("backbone", backbone_lr_scale), ("head", 1.0)):
            members = [p for p in group["params"] if (id(p) in head) == (part == "head")]
            if members:
                groups.append({"params": members, "weight_decay": group["weight_decay"],
                               "lr": lr * scale, "name": part})
    return groups


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up, then cosine annealing to zero."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def validate(model: nn.Module, loader: DataLoader, criterion: nn.Module,
             device: torch.device = CPU, bf16: bool = False) -> dict:
    """Loss, accuracy, macro F1 and ROC-AUC on the loader's (unshuffled) items, predicted
    the way evaluate and predict do."""
    classifier = Classifier(TorchBackend(model, device, bf16),
                            Normalisation(**normalisation(model)))
    logits = classifier.logits(images for images, _ in loader)
    labels = torch.as_tensor(np.asarray(loader.dataset.labels))
    metrics = classification_metrics(labels.numpy(), probabilities(logits).numpy())
    metrics["loss"] = float(compute_loss(criterion, logits.to(device), labels.to(device)))
    return metrics


@dataclass
class Best:
    """Best epoch so far by the monitored metric; ties go to the lower validation loss."""
    mode: str = "max"
    epoch: int = -1
    value: float = float("nan")
    loss: float = float("inf")
    state: dict = field(default_factory=dict)

    def better(self, value: float, loss: float) -> bool:
        if self.epoch < 0:
            return True
        if value == self.value:
            return loss < self.loss
        return value > self.value if self.mode == "max" else value < self.value

    def update(self, epoch: int, value: float, loss: float, model: nn.Module) -> bool:
        if not self.better(value, loss):
            return False
        self.epoch, self.value, self.loss = epoch, value, loss
        self.state = copy.deepcopy(model.state_dict())
        return True

    def stale(self, epoch: int, patience: int) -> bool:
        """True once `patience` epochs have passed without a new best."""
        return self.epoch >= 0 and epoch - self.epoch > patience


def monitored(val: dict, monitor: str) -> float:
    value = val[MONITORED[monitor]]
    return float("nan") if value is None else float(value)


@dataclass
class EpochLog:
    epoch: int
    frozen: bool
    train_loss: float
    val: dict
    lr: float
    seconds: float
    images_per_second: float
    gpu: dict
    data_wait_seconds: float = 0.0  # of `seconds`, spent waiting for the next batch

    @property
    def data_wait_share(self) -> float:
        """Share of the epoch's training time spent waiting for the loader: near 0 when the
        device sets the pace, near 1 when augmentation starves it."""
        return self.data_wait_seconds / self.seconds if self.seconds > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        """The figures dvclive logs for this epoch, by name."""
        logged = {"train/loss": self.train_loss, "lr": self.lr,
                  "epoch_seconds": round(self.seconds, 2),
                  "images_per_second": round(self.images_per_second, 1),
                  "data_wait_share": round(self.data_wait_share, 4)}
        logged.update({f"val/{key}": self.val[key]
                       for key in ("loss", "accuracy", "f1_macro", "roc_auc")
                       if self.val[key] is not None})
        logged.update({key: round(value, 3) for key, value in self.gpu.items()})
        return logged


@dataclass
class Trainer:
    """Everything one training run holds; `fit` drives it epoch by epoch."""
    model: nn.Module
    train_set: Dataset
    val_set: Dataset
    params: TrainParams
    seed: int
    num_classes: int
    device: torch.device = CPU
    state_dir: Path | None = None
    rank: int = 0
    world: int = 1
    stop_requested: Callable[[], bool] = lambda: False
    fingerprint: str = ""  # of this run; saved state with another one is not resumed

    def __post_init__(self) -> None:
        p = self.params
        self.model.to(self.device)
        if self.device.type == "cuda" and p.channels_last:
            self.model.to(memory_format=torch.channels_last)
        labels = np.asarray(self.train_set.labels)
        self.criterion = loss_function(self.num_classes, labels if p.class_weights else None,
                                       p.label_smoothing)
        self.criterion.to(self.device)
        self.generator = torch.Generator()
        cuda = self.device.type == "cuda"
        workers = dict(num_workers=p.num_workers, pin_memory=cuda,
                       persistent_workers=cuda and p.num_workers > 0,
                       worker_init_fn=seed_worker if p.num_workers else None)
        self.sampler = (DistributedSampler(self.train_set, self.world, self.rank, seed=self.seed)
                        if self.world > 1 else None)
        self.train_loader = DataLoader(
            self.train_set, batch_size=p.batch_size, shuffle=self.sampler is None,
            sampler=self.sampler, generator=self.generator,
            drop_last=len(self.train_set) > p.batch_size * self.world, **workers)
        self.val_loader = DataLoader(self.val_set, batch_size=p.batch_size, **workers)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, p.lr, p.backbone_lr_scale, p.weight_decay))
        steps = len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(p.epochs * steps, p.warmup_epochs * steps))
        self.best = Best(mode=p.monitor_mode)
        self.start_epoch = 0
        self.normalisation = normalisation(self.model)
        self.history: list[dict] = []  # what was logged per epoch, kept with the state
        self.data_wait_seconds = 0.0  # of the last train_epoch: time blocked on the loader
        self.first_batch_seconds = 0.0  # of that, the wait for the epoch's first batch
        self._wrapped: tuple[bool, nn.Module] | None = None

    def forward_model(self, frozen: bool) -> nn.Module:
        """The module to train: DDP (rebuilt when the trainable set changes) and compiled."""
        if self._wrapped is None or self._wrapped[0] != frozen:
            module: nn.Module = self.model
            if self.world > 1:
                ids = [self.device.index] if self.device.type == "cuda" else None
                module = DistributedDataParallel(module, device_ids=ids)
            if self.params.compile:
                module = torch.compile(module)
            self._wrapped = (frozen, module)
        return self._wrapped[1]

    def train_epoch(self, epoch: int, frozen: bool) -> tuple[float, int]:
        set_backbone_frozen(self.model, frozen)
        train_mode(self.model, frozen)
        module = self.forward_model(frozen)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        total, count = torch.zeros((), device=self.device), 0
        batches = tqdm(self.train_loader, desc=f"epoch {epoch}", leave=False, disable=None)
        self.data_wait_seconds = 0.0
        for step, (waited, (images, labels)) in enumerate(timed(batches)):
            self.data_wait_seconds += waited
            if step == 0:
                self.first_batch_seconds = waited
            if rank_zero_decides(self.stop_requested()):
                raise Interrupted(f"interrupted in epoch {epoch}")
            loss = self.train_step(module, self.model_input(images), labels)
            total += loss * len(labels)
            count += len(labels)
        return float(total) / max(count, 1), count * self.world

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of uint8 N x H x W x 3 images, normalised on the device (so only bytes
        cross to a GPU), in the memory layout the step wants."""
        inputs = normalise(images.to(self.device, non_blocking=True), **self.normalisation)
        if self.device.type == "cuda" and self.params.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def train_step(self, module: nn.Module, images: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
        """One optimisation step on one batch of model inputs; the batch's mean loss,
        detached, on the device (reading it would wait for the device)."""
        labels = labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.params.bf16):
            loss = compute_loss(self.criterion, module(images), labels)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    def save_state(self, epoch: int) -> None:
        if self.state_dir is None or self.rank != 0:
            return
        state = {"epoch": epoch, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(),
                 "best": {"epoch": self.best.epoch, "value": self.best.value,
                          "loss": self.best.loss, "state": self.best.state},
                 "history": self.history, "fingerprint": self.fingerprint}
        with atomic_path(self.state_dir / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def clear_state(self) -> None:
        """Forget the saved state once the run is complete: nothing is left to resume."""
        if self.state_dir is not None and self.rank == 0:
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    def load_state(self) -> Literal["resumed", "absent", "other run"]:
        """Continue after the last completed epoch saved in state_dir, if there is one and it
        comes from this very run (same fingerprint)."""
        path = None if self.state_dir is None else self.state_dir / STATE_FILE
        if path is None or not path.is_file():
            return "absent"
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            return "other run"
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        best = state["best"]
        self.best = Best(self.params.monitor_mode, best["epoch"], best["value"], best["loss"],
                         best["state"])
        self.start_epoch = state["epoch"] + 1
        self.history = state["history"]
        return "resumed"

    def fit(self, on_epoch: Callable[[EpochLog], None] = lambda log: None) -> Best:
        p = self.params
        epochs = tqdm(range(self.start_epoch, p.epochs), desc="epochs", disable=None)
        for epoch in epochs:
            if rank_zero_decides(self.best.stale(epoch, p.patience)):
                break
            reseed_epoch(self.seed, epoch, self.train_set, self.generator)
            frozen = epoch < p.freeze_epochs
            lr = next(g["lr"] for g in self.optimizer.param_groups if g["name"] == "head")
            start = time.perf_counter()
            train_loss, seen = self.train_epoch(epoch, frozen)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            val = validate(self.model, self.val_loader, self.criterion, self.device, p.bf16)
            self.best.update(epoch, monitored(val, p.monitor), val["loss"], self.model)
            log = EpochLog(epoch, frozen, train_loss, val, lr, seconds, seen / seconds,
                           peak_memory_gb(self.device), self.data_wait_seconds)
            self.history.append(log.metrics())
            self.save_state(epoch)
            if self.rank == 0:
                on_epoch(log)
        return self.best
