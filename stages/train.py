"""Stage `train`: two-stage transfer learning of a timm model on the prepared train split.

Stage one trains only the classifier head on a frozen backbone, stage two the whole
network; AdamW with warm-up and cosine schedule, early stopping on `train.monitor`, and the
best epoch is saved as models/model.safetensors + models/model.json, with
metrics/train.json (best epoch and its value of train.monitor: the DVC metric) and
metrics/report/train.json. dvclive logs every epoch to metrics/train. SIGINT/SIGTERM stop
cleanly after saving nothing partial; `train.resume: true` continues from models/last when
the state there comes from this same run (params, data, starting weights and code), and
the state is cleared once a run completes. Runs under torchrun for several GPUs. On CUDA,
dvclive's system monitor logs GPU, CPU and memory use beside.
"""

import signal
import sys
from pathlib import Path

import pandas as pd
import timm
import torch
from dvclive import Live

from medimg.data.hashing import file_sha256
from medimg.devices import (
    close_distributed,
    cpu_record,
    init_distributed,
    reproducible_cpu,
    resolve_device,
)
from medimg.errors import run
from medimg.io import write_json
from medimg.params import Params, load_params
from medimg.training.datasets import ArrayDataset, train_transform
from medimg.training.models import ModelConfig, create_model, normalisation, save_checkpoint
from medimg.training.trainer import (
    Best,
    EpochLog,
    Interrupted,
    Trainer,
    fingerprint,
    seed_everything,
)

PREPARED = Path("data/prepared")
MODEL_DIR = Path("models")
STATE_DIR = Path("models/last")  # scratch for train.resume, ignored by git and DVC
LIVE_DIR = Path("metrics/train")
METRICS = Path("metrics/train.json")  # headline figures: the DVC metric
REPORT = Path("metrics/report/train.json")
DATA_FILES = [PREPARED / name for name in ("train.npy", "train.csv", "val.npy", "val.csv")]


class StopFlag:
    """Set by SIGINT or SIGTERM; the loop checks it between batches."""

    def __init__(self) -> None:
        self.raised = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.raised = True

    def __call__(self) -> bool:
        return self.raised


def datasets(params: Params) -> tuple[ArrayDataset, ArrayDataset]:
    labels = {name: pd.read_csv(PREPARED / f"{name}.csv")["label"] for name in ("train", "val")}
    augment = train_transform(params.prepare.image_size, params.train.augment, params.seed)
    return (ArrayDataset(PREPARED / "train.npy", labels["train"], augment),
            ArrayDataset(PREPARED / "val.npy", labels["val"]))


def log_metrics(live: Live, metrics: dict[str, float]) -> None:
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.next_step()


def log_epoch(live: Live, log: EpochLog) -> None:
    log_metrics(live, log.metrics())
    print(f"epoch {log.epoch} {'frozen' if log.frozen else 'full'}: train loss "
          f"{log.train_loss:.4f}, val loss {log.val['loss']:.4f}, val f1 "
          f"{log.val['f1_macro']:.4f}, {log.images_per_second:.0f} img/s")


def run_settings(params: Params) -> dict:
    """Every params key that shapes training (the train stage's params in dvc.yaml), less
    train.resume, which only says whether to continue."""
    return {"train": params.train.model_dump(exclude={"resume"}), "seed": params.seed,
            "classes": params.classes, "model": params.model.model_dump(),
            "cpu_threads": params.cpu_threads,
            "prepare": {"image_size": params.prepare.image_size,
                        "resize": params.prepare.resize},
            "dedup": decode_rules(params)}


def decode_rules(params: Params) -> dict:
    """The dedup stage's decoding limits, saved with the model so that predict and the
    service decode as the training data was."""
    return {"max_pixels": params.dedup.max_pixels, "min_side": params.dedup.min_side}


def resume(trainer: Trainer) -> None:
    """Continue the interrupted run saved in STATE_DIR, if it is this same run."""
    status = trainer.load_state()
    if status == "resumed":
        print(f"train: resuming after epoch {trainer.start_epoch - 1}")
    elif status == "other run":
        print(f"train: {STATE_DIR} holds the state of another run (params, data, starting "
              f"weights or code differ); starting afresh")
    else:
        print(f"train: train.resume is set but {STATE_DIR} holds no state; starting afresh")


def write_metrics(best: Best, params: Params, history: list[dict]) -> None:
    monitor = params.train.monitor
    write_json(REPORT, {"best_epoch": best.epoch, "monitor": monitor,
                        "best_value": best.value, "best_val_loss": best.loss,
                        "epochs_run": len(history),
                        "stopped_early": len(history) < params.train.epochs,
                        # the epochs' training passes (not validation), resumed ones too
                        "training_seconds": round(sum(h["epoch_seconds"] for h in history),
                                                  1),
                        # which kernels ran: weights that differ from a lock are explained by
                        # comparing this with the report of the run that wrote the lock
                        "cpu": cpu_record()})
    # "best": the monitored value under one name, so the column's width does not depend
    # on train.monitor (the metrics must fit a screen).
    write_json(METRICS, {"best_epoch": best.epoch, "best": round(best.value, 4)})


def main() -> None:
    params = load_params()
    train = params.train
    reproducible_cpu(params.cpu_threads)
    device = resolve_device(train.device)
    rank, world = init_distributed(device)
    seed_everything(params.seed, train.deterministic)
    model = create_model(params.model.name, params.model.pretrained, len(params.classes))
    run = fingerprint(run_settings(params), DATA_FILES, model)
    train_set, val_set = datasets(params)
    trainer = Trainer(model, train_set, val_set, train, params.seed, len(params.classes),
                      device, STATE_DIR, rank, world, stop_requested=StopFlag(),
                      fingerprint=run)
    if train.resume:
        resume(trainer)
    # dvclive's system monitor reads the GPUs through NVML; without an NVIDIA driver every
    # reading fails and it logs a traceback instead of the CPU figures, so GPU runs only.
    live = (Live(str(LIVE_DIR), dvcyaml=False, save_dvc_exp=False,
                 monitor_system=device.type == "cuda") if rank == 0 else None)
    for earlier in trainer.history if live else []:  # dvclive's files start afresh in a stage
        log_metrics(live, earlier)
    try:
        best = trainer.fit(on_epoch=lambda log: log_epoch(live, log) if live else None)
    except Interrupted as stop:
        saved = (f"epochs 0 to {len(trainer.history) - 1} are saved in {STATE_DIR}; rerun "
                 "with train.resume: true to continue") if trainer.history else (
                 "no epoch was completed")
        print(f"train: {stop}; {saved}", file=sys.stderr)
        sys.exit(130)
    finally:
        if live is not None:
            live.end()  # also stops the system monitor's thread, which would keep us alive
        close_distributed()
    if live is None:
        return
    model.load_state_dict(best.state)
    save_checkpoint(MODEL_DIR, model, ModelConfig(
        model=params.model.name,
        classes=params.classes,
        image_size=params.prepare.image_size,
        resize=params.prepare.resize,
        decode=decode_rules(params),
        **normalisation(model),
        pretrained=params.model.pretrained,
        train=train.model_dump(),
        seed=params.seed,
        data_sha256=file_sha256(PREPARED / "train.npy"),
        best_epoch=best.epoch,
        monitor=train.monitor,
        best_value=best.value,
        timm=timm.__version__,
        torch=torch.__version__,
    ))
    write_metrics(best, params, trainer.history)
    trainer.clear_state()
    print(f"train: best epoch {best.epoch}, {train.monitor} {best.value:.4f}; wrote {MODEL_DIR}")


if __name__ == "__main__":
    run(main)
