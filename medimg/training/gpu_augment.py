"""The training augmentations of `train.augment`, done on the GPU for a whole batch at once.

The real loop augments image by image with albumentations in loader processes
(`medimg.data.train_transform`). To tell whether those processes starve a GPU, the training
benchmark also runs the loop's own step on batches augmented here: uint8 images resident
on the device, one affine resampling per image for the random resized crop, the flips and
the rotation, then brightness and contrast, Gaussian noise, Gaussian and motion blur and
the normalisation, each with the probability and magnitude of `train.augment`. The draws
follow the same distributions as albumentations' but are not the same numbers, so this is
a measuring tool, not a replacement for the pipeline's transform.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medimg.inference import normalise
from medimg.params import AugmentParams


def gaussian_kernel(size: int) -> torch.Tensor:
    """OpenCV's default sigma for a kernel of `size` (what albumentations uses), 2-D."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-x**2 / (2 * sigma**2))
    line /= line.sum()
    return line[:, None] * line[None, :]


def motion_kernels(size: int) -> torch.Tensor:
    """Line kernels in four directions (horizontal, vertical, both diagonals): 4 x size x size."""
    eye = torch.eye(size)
    horizontal = torch.zeros(size, size)
    horizontal[size // 2] = 1.0
    kernels = torch.stack([horizontal, horizontal.T, eye, eye.flip(1)])
    return kernels / kernels.sum(dim=(1, 2), keepdim=True)


class GpuAugment:
    """Call with an N x H x W x 3 uint8 batch on any device; returns N x 3 x size x size
    float32, normalised, in channels_last layout, on that device."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 aug: AugmentParams, device: torch.device, seed: int = 0,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size, self.aug, self.device, self.ratio = size, aug, device, ratio
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.mean, self.std = mean, std
        k = max(3, aug.blur_limit | 1)  # odd kernel
        self.pad = k // 2
        self.gauss = gaussian_kernel(k).to(device).expand(3, 1, k, k).contiguous()
        self.motion = motion_kernels(k).to(device)

    def uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, device=self.device, generator=self.generator) * (high - low) + low

    def chance(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, device=self.device, generator=self.generator) < p

    def geometry(self, n: int) -> torch.Tensor:
        """N x 2 x 3 affine matrices (output to input, in [-1, 1] coordinates)."""
        a = self.aug
        area = self.uniform(n, a.crop_scale_min, 1.0)
        ratio = torch.exp(self.uniform(n, *map(math.log, self.ratio)))
        width = torch.sqrt(area * ratio).clamp(max=1.0)
        height = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = self.uniform(n, -1.0, 1.0) * (1 - width)
        cy = self.uniform(n, -1.0, 1.0) * (1 - height)
        sx = torch.where(self.chance(n, a.hflip), -1.0, 1.0)
        sy = torch.where(self.chance(n, a.vflip), -1.0, 1.0)
        angle = self.uniform(n, -a.rotate_limit, a.rotate_limit) * self.chance(n, a.rotate_p)
        cos, sin = torch.cos(torch.deg2rad(angle)), torch.sin(torch.deg2rad(angle))
        return torch.stack([
            torch.stack([cos * width * sx, -sin * height * sy, cx], dim=1),
            torch.stack([sin * width * sx, cos * height * sy, cy], dim=1),
        ], dim=1)

    def blurred(self, x: torch.Tensor, chosen: torch.Tensor, motion: bool) -> torch.Tensor:
        if not bool(chosen.any()):
            return x
        padded = F.pad(x[chosen], [self.pad] * 4, mode="reflect")
        if motion:
            kernel = self.motion[torch.randint(0, 4, (1,), device=self.device,
                                               generator=self.generator)]
            kernel = kernel.expand(3, 1, *kernel.shape[-2:]).contiguous()
        else:
            kernel = self.gauss
        x = x.clone()
        x[chosen] = F.conv2d(padded, kernel, groups=3)
        return x

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        a, n = self.aug, images.shape[0]
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        grid = F.affine_grid(self.geometry(n), [n, 3, self.size, self.size],
                             align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)
        on = self.chance(n, a.brightness_contrast_p).float()
        alpha = 1 + self.uniform(n, -a.brightness_contrast, a.brightness_contrast) * on
        beta = self.uniform(n, -a.brightness_contrast, a.brightness_contrast) * on
        x = x * alpha.view(n, 1, 1, 1) + beta.view(n, 1, 1, 1)
        sigma = self.uniform(n, 0.0, a.noise_std) * self.chance(n, a.noise_p)
        noise = torch.randn(x.shape, device=self.device, generator=self.generator)
        x = x + noise * sigma.view(n, 1, 1, 1)
        x = self.blurred(x, self.chance(n, a.motion_blur_p), motion=True)
        x = self.blurred(x, self.chance(n, a.gaussian_blur_p), motion=False)
        x = normalise(x.clamp_(0.0, 1.0).permute(0, 2, 3, 1), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last)
