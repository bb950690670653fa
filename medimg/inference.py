"""Pixels to probabilities, one way for everything that runs a model: validation during
training, evaluate, the ood stage, export's parity check, and (through
`medimg.serving.predictor`) predict and the service.

Images arrive decoded and resized, uint8 N x H x W x 3 (as the prepare stage stores them
and `prepare_image` returns them). `normalise` is the only normalisation; `Classifier`
runs them batch by batch through a backend, a PyTorch module on any device or an ONNX
Runtime session, and `Classifier.outputs` is the only batched-inference loop: logits and
the stage features the out-of-distribution detector scores. `Ensemble`
averages the probabilities of several classifiers (and of flipped views, for test-time
augmentation) behind the same `predict` and `config`.
"""

import glob
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medimg.data.images import is_image_name
from medimg.devices import autocast
from medimg.errors import ModelError
from medimg.io import atomic_path, read_json
from medimg.training.models import (
    DecodeRules,
    ModelConfig,
    Normalisation,
    load_checkpoint,
    probabilities,
)

ONNX_NAME = "model.onnx"
ONNX_SIDECAR = "model.onnx.json"
ENSEMBLE_NAME = "ensemble.json"  # in a folder of member folders: {"members": [...], "tta": ...}
# What every member of an ensemble must share: one decoded image serves them all.
SHARED = ("classes", "image_size", "resize", "decode")


@dataclass(frozen=True)
class EnsembleConfig:
    """An ensemble's config: what its members share (SHARED), their number, and whether
    flipped views are averaged too."""
    classes: list[str]
    image_size: int
    resize: str
    decode: DecodeRules
    members: int
    tta: bool
CPU = torch.device("cpu")


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """N x H x W x 3 images, uint8 (0 to 255) or float (0 to 1), to float32 N x 3 x H x W
    standardised with the pretrained weights' mean and std, on the images' device."""
    values = images.permute(0, 3, 1, 2).float()
    if images.dtype == torch.uint8:
        values = values / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32, device=values.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=values.device).view(1, -1, 1, 1)
    return ((values - mean_t) / std_t).contiguous()


def in_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    return (images[start:start + batch_size] for start in range(0, len(images), batch_size))


def as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    # np.array copies: a slice of a read-only memory map cannot back a tensor.
    return images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))


Outputs = tuple[torch.Tensor, torch.Tensor | None]  # logits, stage features (or None)


def logits_and_features(model: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    """A timm classifier's logits and its stage features: the output of each feature stage
    (timm's `forward_intermediates`), averaged over the image and concatenated. The same
    forward pass as `model(batch)`, keeping what the out-of-distribution score reads: early
    stages keep the texture and colour that the fine-tuned head forgets."""
    final, stages = model.forward_intermediates(batch)
    features = torch.cat([stage.mean(dim=(2, 3)) for stage in stages], dim=1)
    return model.forward_head(final), features


class WithFeatures(torch.nn.Module):
    """`logits_and_features` as a module, for the ONNX export's two outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits_and_features(self.model, batch)


class TorchBackend:
    """A PyTorch module on a device, under bf16 autocast on CUDA when asked."""

    def __init__(self, model: torch.nn.Module, device: torch.device = CPU,
                 bf16: bool = False) -> None:
        self.model, self.device, self.bf16 = model.to(device), device, bf16

    def __call__(self, batch: torch.Tensor) -> Outputs:
        self.model.eval()
        with torch.inference_mode(), autocast(self.device, self.bf16):
            logits, features = logits_and_features(self.model, batch)
            return logits.float(), features.float()


class OnnxBackend:
    """An ONNX Runtime session on the CPU; features come from a second output when the
    export has one."""

    device = CPU

    def __init__(self, path: Path, serving: bool = False, threads: int = 0) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per core
        if serving:
            # The arena keeps what each batch shape needed: fastest for a few fixed batch
            # sizes, but a server that sees every size keeps growing. Threads that spin
            # between calls take the cores the server's decoding and event loop need:
            # without spinning, `medimg serve` used 25-30% less CPU per request
            # (benchmarks/serve_benchmark.py).
            options.enable_cpu_mem_arena = False
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> Outputs:
        logits, *features = self.session.run(None, {self.input: batch.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(features[0]) if features else None


@dataclass
class Classifier:
    """A model behind one call; `config` is its model.json (or, while training, only its
    normalisation)."""
    backend: TorchBackend | OnnxBackend
    config: ModelConfig | Normalisation

    def outputs(self, batches: Iterable[np.ndarray | torch.Tensor]) -> Outputs:
        """float32 logits and features on the CPU for batches of uint8 N x H x W x 3
        images, in order (features None when the backend has none)."""
        device = self.backend.device
        logits, features = zip(*(
            self.backend(normalise(as_tensor(batch).to(device, non_blocking=True),
                                   self.config.mean, self.config.std))
            for batch in batches), strict=True)
        return (torch.cat(logits).cpu(),
                None if features[0] is None else torch.cat(features).cpu())

    def logits(self, batches: Iterable[np.ndarray | torch.Tensor]) -> torch.Tensor:
        return self.outputs(batches)[0]

    def predict_with_features(self, images: np.ndarray,
                              batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """N x C class probabilities (float64) and N x D features (float32) for uint8
        N x H x W x 3 images."""
        logits, features = self.outputs(in_batches(images, batch_size))
        if features is None:
            raise ModelError("this ONNX model has no features output; run the export stage "
                             "again (dvc repro export)")
        return probabilities(logits).numpy(), features.numpy()

    def predict(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """N x C class probabilities (float64) for uint8 N x H x W x 3 images."""
        return probabilities(self.logits(in_batches(images, batch_size))).numpy()


class Ensemble:
    """Several classifiers as one: the mean of their class probabilities, with `tta` also
    over each image's left-right and upside-down flips. The members share the classes and
    the decoding (limits, image size and resize policy), so one decoded image serves them
    all."""

    def __init__(self, members: list[Classifier], tta: bool = False) -> None:
        first = members[0].config
        for key in SHARED:
            values = [getattr(member.config, key) for member in members]
            if any(value != getattr(first, key) for value in values):
                raise ModelError(f"ensemble members differ in '{key}': {values}")
        self.members, self.tta = members, tta
        self.config = EnsembleConfig(**{key: getattr(first, key) for key in SHARED},
                                     members=len(members), tta=tta)

    def predict(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """N x C class probabilities (float64), the mean over members and views."""
        views = [images]
        if self.tta:
            views += [np.ascontiguousarray(images[:, :, ::-1]),
                      np.ascontiguousarray(images[:, ::-1])]
        return np.mean([member.predict(view, batch_size) for member in self.members
                        for view in views], axis=0)


def load_classifier(model_dir: Path, backend: str = "torch", device: torch.device = CPU,
                    onnx_file: str = ONNX_NAME, serving: bool = False,
                    threads: int = 0) -> Classifier | Ensemble:
    """The checkpoint in `model_dir` (model.safetensors + model.json) on `device`, or its
    ONNX export (`onnx_file`, relative to `model_dir`) in ONNX Runtime (set up for a
    server when `serving`, on `threads` threads per call, 0 for one per core); an Ensemble
    when `model_dir` holds ensemble.json and a folder per member."""
    if (model_dir / ENSEMBLE_NAME).is_file():
        spec = read_json(model_dir / ENSEMBLE_NAME)
        return Ensemble([load_classifier(model_dir / name, backend, device, onnx_file,
                                         serving, threads) for name in spec["members"]],
                        spec["tta"])
    if backend == "torch":
        model, config = load_checkpoint(model_dir)
        return Classifier(TorchBackend(model, device), config)
    if backend != "onnx":
        raise ValueError(f"unknown backend {backend!r}; use torch or onnx")
    if not (model_dir / onnx_file).is_file():
        raise ModelError(f"--backend onnx: {model_dir / onnx_file} not found; run the export "
                         "stage (dvc repro export)")
    return Classifier(OnnxBackend(model_dir / onnx_file, serving, threads),
                      ModelConfig.load(model_dir))


def expand_inputs(items: list[str]) -> Iterator[tuple[str, str | None]]:
    """(path, error) for each input: files as given, folders searched for image files,
    and glob patterns expanded. A name that matches nothing comes back with an error."""
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p)
                           and not any(part.startswith(".") for part in p.parts))
            if not found:
                yield item, "folder holds no image files"
            for file in found:
                yield str(file), None
        elif path.is_file():
            yield item, None
        elif any(char in item for char in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                yield item, "pattern matches no file"
            yield from ((match, None) for match in matches if Path(match).is_file())
        else:
            yield item, "no such file or folder"


def export_onnx(classifier: Classifier, target: Path, opset: int) -> None:
    """The classifier's PyTorch model as an ONNX file with two outputs, logits and
    features, and a dynamic batch size."""
    import onnx  # only the export needs it

    size = classifier.config.image_size
    example = torch.zeros(2, 3, size, size)
    with atomic_path(target) as tmp:
        torch.onnx.export(WithFeatures(classifier.backend.model).eval(), (example,), str(tmp),
                          input_names=["image"], output_names=["logits", "features"],
                          opset_version=opset, dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=False, verbose=False)
        # The exporter stores stack traces with absolute source paths on every node: drop
        # them, so the same weights give the same file wherever the project lives.
        graph = onnx.load(str(tmp))
        for node in graph.graph.node:
            del node.metadata_props[:]
        onnx.save(graph, str(tmp))
