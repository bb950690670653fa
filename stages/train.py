"""Stage `train`: two-stage transfer learning of a timm model on the train split.

Stage one trains only the classifier head on a frozen backbone, stage two the whole
network; AdamW with a cosine schedule, early stopping, and the best epoch by val F1 is
saved as models/model.safetensors + models/model.json. dvclive logs every epoch.
"""

from pathlib import Path

import pandas as pd
import timm
import torch
from dvclive import Live
from torch.utils.data import DataLoader

from medimg.data import ArrayDataset, eval_transform, train_transform
from medimg.hashing import file_sha256
from medimg.models import create_model, normalisation, save_checkpoint
from medimg.params import Params, load_params
from medimg.training import (
    Best,
    epochs_with_patience,
    loss_function,
    seed_everything,
    train_epoch,
    validate,
)

PREPARED = Path("data/prepared")
MODEL_DIR = Path("models")
LIVE_DIR = Path("metrics/train")


def loaders(params: Params, norm: dict,
            generator: torch.Generator) -> tuple[DataLoader, DataLoader]:
    size, train = params.prepare.image_size, params.train
    labels = {name: pd.read_csv(PREPARED / f"{name}.csv")["label"] for name in ("train", "val")}
    train_set = ArrayDataset(PREPARED / "train.npy", labels["train"],
                             train_transform(size, **norm, aug=train.augment, seed=params.seed))
    val_set = ArrayDataset(PREPARED / "val.npy", labels["val"], eval_transform(**norm))
    return (
        DataLoader(train_set, batch_size=train.batch_size, shuffle=True, generator=generator,
                   num_workers=train.num_workers, drop_last=len(train_set) > train.batch_size),
        DataLoader(val_set, batch_size=train.batch_size, num_workers=train.num_workers),
    )


def main() -> None:
    params = load_params()
    generator = seed_everything(params.seed)
    model = create_model(params.model.name, params.model.pretrained, len(params.classes))
    norm = normalisation(model)
    train_loader, val_loader = loaders(params, norm, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.train.lr,
                                  weight_decay=params.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=params.train.epochs * len(train_loader))
    criterion = loss_function(len(params.classes))
    best = Best()
    with Live(str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        for epoch in epochs_with_patience(params.train.epochs, params.train.patience, best):
            frozen = epoch < params.train.freeze_epochs
            live.log_metric("lr", optimizer.param_groups[0]["lr"])
            train_loss = train_epoch(model, train_loader, criterion, optimizer, scheduler, frozen)
            val = validate(model, val_loader, criterion)
            best.update(epoch, val["f1_macro"], val["loss"], model)
            live.log_metric("train/loss", train_loss)
            for key in ("loss", "accuracy", "f1_macro", "roc_auc"):
                if val[key] is not None:
                    live.log_metric(f"val/{key}", val[key])
            print(f"epoch {epoch} {'frozen' if frozen else 'full'}: train loss {train_loss:.4f}, "
                  f"val loss {val['loss']:.4f}, val f1 {val['f1_macro']:.4f}")
            live.next_step()
        live.summary["best"] = {"epoch": best.epoch, "val_f1": best.f1, "val_loss": best.loss}
    model.load_state_dict(best.state)
    save_checkpoint(MODEL_DIR, model, {
        "model": params.model.name,
        "classes": params.classes,
        "image_size": params.prepare.image_size,
        "resize": params.prepare.resize,
        **norm,
        "threshold": 0.5,
        "pretrained": params.model.pretrained,
        "train": params.train.model_dump(),
        "seed": params.seed,
        "data_sha256": file_sha256(PREPARED / "train.npy"),
        "best_epoch": best.epoch,
        "best_val_f1": best.f1,
        "timm": timm.__version__,
        "torch": torch.__version__,
    })
    print(f"train: best epoch {best.epoch}, val f1 {best.f1:.4f}; wrote {MODEL_DIR}")


if __name__ == "__main__":
    main()
