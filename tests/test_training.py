import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medimg.models import create_model
from medimg.training import Best, epochs_with_patience, loss_function, train_epoch, validate

TINY = "test_efficientnet"


def tiny_setup(num_classes: int = 2):
    torch.manual_seed(0)
    model = create_model(TINY, "none", num_classes)
    images = torch.randn(16, 3, 32, 32)
    labels = torch.arange(16) % num_classes
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    return model, loader, optimizer, scheduler, loss_function(num_classes)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_frozen_stage_changes_only_the_head() -> None:
    model, loader, optimizer, scheduler, criterion = tiny_setup()
    before = snapshot(model)
    train_epoch(model, loader, criterion, optimizer, scheduler, frozen=True)
    after = model.state_dict()
    head = {f"classifier.{name}" for name, _ in model.get_classifier().named_parameters()}
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed == head
    assert any("running_mean" in key for key in before)  # BN statistics exist and stayed


def test_full_stage_changes_the_backbone() -> None:
    model, loader, optimizer, scheduler, criterion = tiny_setup()
    before = snapshot(model)
    train_epoch(model, loader, criterion, optimizer, scheduler, frozen=False)
    assert not torch.equal(before["conv_stem.weight"], model.state_dict()["conv_stem.weight"])
    assert not torch.equal(before["bn1.running_mean"], model.state_dict()["bn1.running_mean"])


def test_four_classes_train_with_cross_entropy() -> None:
    model, loader, optimizer, scheduler, criterion = tiny_setup(num_classes=4)
    assert isinstance(criterion, torch.nn.CrossEntropyLoss)
    loss = train_epoch(model, loader, criterion, optimizer, scheduler, frozen=False)
    metrics = validate(model, loader, criterion)
    assert np.isfinite(loss) and metrics["n"] == 16 and metrics["roc_auc"] is not None


def test_early_stopping_after_patience_epochs_without_improvement() -> None:
    model = torch.nn.Linear(1, 1)
    best = Best()
    f1_by_epoch = [0.5, 0.7, 0.6, 0.7, 0.65, 0.9, 0.95]
    seen = []
    for epoch in epochs_with_patience(len(f1_by_epoch), patience=3, best=best):
        seen.append(epoch)
        best.update(epoch, f1_by_epoch[epoch], loss=1.0, model=model)
    assert seen == [0, 1, 2, 3, 4]  # best at 1; 2, 3, 4 bring nothing; stop before 5
    assert best.epoch == 1 and best.f1 == pytest.approx(0.7)


def test_best_keeps_the_weights_of_the_best_epoch() -> None:
    model = torch.nn.Linear(1, 1)
    best = Best()
    torch.nn.init.constant_(model.weight, 1.0)
    best.update(0, 0.8, 0.5, model)
    torch.nn.init.constant_(model.weight, 2.0)
    assert not best.update(1, 0.7, 0.1, model)  # worse F1, lower loss: not better
    torch.nn.init.constant_(model.weight, 3.0)
    assert best.update(2, 0.8, 0.4, model)  # same F1, lower loss: better
    assert best.epoch == 2 and float(best.state["weight"]) == 3.0
