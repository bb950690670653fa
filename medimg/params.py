"""Typed, validated access to params.yaml.

The whole file is validated on every load, so a typo anywhere stops a stage with one
line that names the key and the file, instead of a KeyError deep inside training.
"""

import difflib
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from medimg.errors import ParamsError

PARAMS_FILE = Path("params.yaml")
# train.monitor's choices and the validation metric each one reads.
MONITORED = {"val_f1": "f1_macro", "val_loss": "loss", "val_accuracy": "accuracy",
             "val_roc_auc": "roc_auc"}
# Which way each is better: with the wrong mode the "best" epoch would be the worst.
BETTER = {"val_f1": "max", "val_loss": "min", "val_accuracy": "max", "val_roc_auc": "max"}


def _not_bool(value: object) -> object:
    # YAML's `yes`/`true` would otherwise pass as 1.0 for a float key.
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


# Floats stay lax because PyYAML reads `1e-3` (no dot) as a string; ints are strict.
Number = Annotated[float, BeforeValidator(_not_bool)]
Fraction = Annotated[Number, Field(ge=0.0, le=1.0)]
Int = Annotated[int, Field(strict=True)]
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Bool = Annotated[bool, Field(strict=True)]


def _switch_words(value: object) -> object:
    # YAML reads an unquoted `off` / `on` as a boolean.
    return {False: "off", True: "on"}.get(value, value) if isinstance(value, bool) else value


Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_switch_words)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    raw_dir: str
    class_level: PositiveInt = 1
    groups_file: str | None = None
    group_regex: str | None = None
    ignore_classes: list[str] = []
    labels_file: str | None = None
    key_file: str = "pseudonym.key"
    volume_plane: Literal["axial", "coronal", "sagittal"] = "axial"
    slice_step: PositiveInt = 1
    slice_central: Annotated[Number, Field(gt=0.0, le=1.0)] = 1.0
    slice_min_foreground: Fraction = 0.0
    labels_per: Literal["image", "patient"] = "image"


class SampleParams(Section):
    min_foreground: Fraction
    slab_size: PositiveInt
    slab_gap: NonNegativeInt
    tile_size: PositiveInt
    tile_stride: PositiveInt
    region_size: PositiveInt
    min_tissue: Fraction


class DedupParams(Section):
    enabled: Bool
    min_side: PositiveInt
    max_pixels: PositiveInt
    workers: NonNegativeInt
    near_hamming: Annotated[int, Field(strict=True, ge=0, le=64)]
    near_correlation: Fraction
    edit_hamming: Annotated[int, Field(strict=True, ge=0, le=64)]
    edit_correlation: Fraction
    crop_correlation: Fraction
    similarity: Switch
    similar_hamming: Annotated[int, Field(strict=True, ge=0, le=64)]
    similar_correlation: Fraction
    similar_far_hamming: Annotated[int, Field(strict=True, ge=0, le=64)]
    similar_far_correlation: Fraction
    similar_linkage: Fraction
    review_limit: NonNegativeInt
    keep_test_copies: Bool

    @model_validator(mode="after")
    def _similar_bar_rises(self) -> "DedupParams":
        if self.similar_far_hamming < self.similar_hamming:
            raise ValueError("similar_far_hamming must be at least similar_hamming")
        if self.similar_far_correlation < self.similar_correlation:
            raise ValueError("similar_far_correlation must be at least similar_correlation")
        return self


class SplitParams(Section):
    seed: Int
    val: Fraction
    test: Fraction
    folds: NonNegativeInt
    fold: NonNegativeInt
    respect_existing: str | None
    closest_pairs: NonNegativeInt
    min_per_split: PositiveInt

    @model_validator(mode="after")
    def _consistent(self) -> "SplitParams":
        if self.val + self.test >= 1.0:
            raise ValueError("val + test must be below 1")
        if self.folds == 1:
            raise ValueError("folds must be 0 (off) or at least 2")
        if self.folds and self.fold >= self.folds:
            raise ValueError(f"fold must be below folds ({self.folds})")
        return self


class PrepareParams(Section):
    image_size: PositiveInt
    resize: Literal["squash", "pad", "crop"]
    workers: NonNegativeInt


class ModelParams(Section):
    name: str
    pretrained: str


class AugmentParams(Section):
    hflip: Fraction
    vflip: Fraction
    rotate_limit: Annotated[Number, Field(ge=0.0, le=180.0)]
    rotate_p: Fraction
    crop_scale_min: Annotated[Number, Field(gt=0.0, le=1.0)]
    brightness_contrast: Annotated[Number, Field(ge=0.0, le=1.0)]
    brightness_contrast_p: Fraction
    noise_std: Fraction
    noise_p: Fraction
    blur_limit: Annotated[int, Field(strict=True, ge=3)]
    motion_blur_p: Fraction
    gaussian_blur_p: Fraction


class TrainParams(Section):
    batch_size: PositiveInt
    epochs: PositiveInt
    freeze_epochs: NonNegativeInt
    lr: Annotated[Number, Field(gt=0.0)]
    backbone_lr_scale: Annotated[Number, Field(gt=0.0)]
    weight_decay: Annotated[Number, Field(ge=0.0)]
    warmup_epochs: NonNegativeInt
    patience: PositiveInt
    monitor: Literal[tuple(MONITORED)]
    monitor_mode: Literal["max", "min"]
    class_weights: Bool
    label_smoothing: Annotated[Number, Field(ge=0.0, lt=1.0)]
    num_workers: NonNegativeInt
    deterministic: Bool
    device: Literal["auto", "cpu", "cuda", "mps"]
    bf16: Bool
    channels_last: Bool
    compile: Bool
    resume: Bool
    augment: AugmentParams

    @model_validator(mode="after")
    def _monitor_mode_agrees(self) -> "TrainParams":
        if self.monitor_mode != BETTER[self.monitor]:
            raise ValueError(f"monitor_mode must be {BETTER[self.monitor]} for monitor "
                             f"{self.monitor}, which is better "
                             f"{'higher' if BETTER[self.monitor] == 'max' else 'lower'}")
        return self


class OodParams(Section):
    k_candidates: Annotated[list[PositiveInt], Field(min_length=1)]
    accept_share: Annotated[Number, Field(gt=0.0, le=1.0)]
    familiar_share: Annotated[Number, Field(gt=0.0, le=1.0)]
    domain: Annotated[str, Field(min_length=1)]
    reference_size: PositiveInt
    jitter_copies: NonNegativeInt
    outlier_images: Annotated[int, Field(strict=True, ge=2)]
    batch_size: PositiveInt


class ShiftParams(Section):
    permutations: PositiveInt
    folds: Annotated[int, Field(strict=True, ge=2)]
    resamples: PositiveInt
    sheet: NonNegativeInt


class EvaluateParams(Section):
    batch_size: PositiveInt
    bootstrap_resamples: PositiveInt
    ece_bins: PositiveInt
    least_confident: NonNegativeInt
    gradcam_per_class: NonNegativeInt
    external_dir: str | None
    shift: ShiftParams


class ExportParams(Section):
    opset: Annotated[int, Field(strict=True, ge=17)]
    tolerance: Annotated[Number, Field(gt=0.0)]
    int8: Bool


class Params(Section):
    seed: Int
    classes: Annotated[list[str], Field(min_length=2)]
    cpu_threads: PositiveInt
    data: DataParams
    sample: SampleParams
    dedup: DedupParams
    split: SplitParams
    prepare: PrepareParams
    model: ModelParams
    train: TrainParams
    ood: OodParams
    evaluate: EvaluateParams
    export: ExportParams

    @model_validator(mode="after")
    def _classes_unique(self) -> "Params":
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("class names must be unique")
        both = sorted(set(self.classes) & set(self.data.ignore_classes))
        if both:
            raise ValueError(f"data.ignore_classes names listed classes {both}")
        if self.dedup.keep_test_copies and self.split.respect_existing is None:
            raise ValueError("dedup.keep_test_copies needs split.respect_existing, the test "
                             "folder whose copies it keeps")
        return self


def _known_keys(loc: tuple) -> list[str]:
    """The keys the section at `loc` accepts (`loc` ends with the unknown key)."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        field_type = model.model_fields[str(part)].annotation
        if not (isinstance(field_type, type) and issubclass(field_type, BaseModel)):
            return []
        model = field_type
    return list(model.model_fields)


def _first_error(err: ValidationError, path: Path) -> str:
    # An unknown key comes first: a misspelt key also makes its right spelling "missing",
    # and the misspelling is what the user has to find.
    first = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc) or "<top level>"
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _known_keys(first["loc"]), n=1)
        hint = f" (did you mean '{'.'.join(loc[:-1] + close)}'?)" if close else ""
        return f"{path}: unknown key '{key}'{hint}"
    if first["type"] == "missing":
        return f"{path}: missing key '{key}'"
    if first["type"] == "value_error" and isinstance(first.get("input"), dict):
        # A check across the keys of a section: its message names them.
        return f"{path}: bad values in '{key}': {first['msg'].removeprefix('Value error, ')}"
    return f"{path}: bad value for '{key}': {first['msg']} (got {first.get('input')!r})"


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate the params file; any problem becomes a one-line ParamsError."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError as err:
        raise ParamsError(f"{path}: file not found") from err
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from err
    try:
        return Params.model_validate(raw if raw is not None else {})
    except ValidationError as err:
        raise ParamsError(_first_error(err, path)) from err


def flatten(mapping: dict, prefix: str = "", separator: str = ".") -> dict[str, object]:
    """The leaves of a nested mapping by their joined names (`train.lr`)."""
    leaves: dict[str, object] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            leaves.update(flatten(value, f"{prefix}{key}{separator}", separator))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves
