"""Grad-CAM with two hooks on the last convolution: where the model looked for a class."""

import io
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image
from torch import nn

from medimg.inference import as_tensor, normalise


def last_conv(model: nn.Module) -> nn.Module:
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise ValueError("Grad-CAM needs a model with a Conv2d layer")
    return convolutions[-1]


def grad_cam(model: nn.Module, image: torch.Tensor, target: int) -> np.ndarray:
    """H x W map in [0, 1] for class `target` of one normalised image (3 x H x W)."""
    layer = last_conv(model)
    saved: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        saved["activation"] = output
        output.register_hook(lambda grad: saved.__setitem__("gradient", grad))

    handle = layer.register_forward_hook(keep)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(image[None].requires_grad_(True))
            # One-logit heads score class 1 by the logit and class 0 by its negation.
            score = logits[0, target] if logits.shape[1] > 1 else logits[0, 0] * (
                1 if target == 1 else -1)
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        handle.remove()
    weights = saved["gradient"].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * saved["activation"]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach().cpu().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def overlay(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The image with the map blended over it in the 'jet' colours, as uint8 RGB."""
    heat = colormaps["jet"](cam)[..., :3] * 255.0
    return np.clip((1 - alpha) * pixels + alpha * heat, 0, 255).astype(np.uint8)


def gradcam_png(model: nn.Module, pixels: np.ndarray, target: int, mean: Sequence[float],
                std: Sequence[float]) -> bytes:
    """The map of class `target` on one decoded uint8 image, blended over it, as PNG bytes:
    the one render for the evaluate stage's figures, predict and the service."""
    cam = grad_cam(model, normalise(as_tensor(pixels[None]), mean, std)[0], target)
    buffer = io.BytesIO()
    Image.fromarray(overlay(pixels, cam)).save(buffer, format="PNG")
    return buffer.getvalue()
