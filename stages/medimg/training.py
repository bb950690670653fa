"""The training loop: two-stage transfer learning, validation, early stopping."""

import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medimg.metrics import classification_metrics
from medimg.models import probabilities


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


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


def loss_function(num_classes: int) -> nn.Module:
    return nn.BCEWithLogitsLoss() if num_classes == 2 else nn.CrossEntropyLoss()


def compute_loss(criterion: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if isinstance(criterion, nn.BCEWithLogitsLoss):
        return criterion(logits[:, 0], labels.float())
    return criterion(logits, labels)


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and raw logits for every item of the loader, in loader order."""
    model.eval()
    labels, logits = [], []
    for images, batch_labels in loader:
        logits.append(model(images))
        labels.append(batch_labels)
    return torch.cat(labels), torch.cat(logits)


def train_epoch(model: nn.Module, loader: DataLoader, criterion: nn.Module,
                optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                frozen: bool) -> float:
    set_backbone_frozen(model, frozen)
    train_mode(model, frozen)
    total, count = 0.0, 0
    for images, labels in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = compute_loss(criterion, model(images), labels)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(labels)
        count += len(labels)
    return total / max(count, 1)


@dataclass
class Best:
    """Best epoch so far by val F1; ties go to the lower validation loss."""
    epoch: int = -1
    f1: float = -1.0
    loss: float = float("inf")
    state: dict = field(default_factory=dict)

    def update(self, epoch: int, f1: float, loss: float, model: nn.Module) -> bool:
        if f1 > self.f1 or (f1 == self.f1 and loss < self.loss):
            self.epoch, self.f1, self.loss = epoch, f1, loss
            self.state = copy.deepcopy(model.state_dict())
            return True
        return False


def epochs_with_patience(epochs: int, patience: int, best: Best) -> Iterator[int]:
    """Epoch numbers until `epochs`, or until `patience` epochs pass without a new best."""
    for epoch in range(epochs):
        if best.epoch >= 0 and epoch - best.epoch > patience:
            return
        yield epoch


def validate(model: nn.Module, loader: DataLoader, criterion: nn.Module) -> dict:
    labels, logits = predict_logits(model, loader)
    metrics = classification_metrics(labels.numpy(), probabilities(logits).numpy())
    metrics["loss"] = float(compute_loss(criterion, logits, labels))
    return metrics
