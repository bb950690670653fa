"""Resizing, prepared arrays, datasets and albumentations transforms."""

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from medimg.images import load_rgb
from medimg.params import AugmentParams

RESIZE_POLICIES = ("squash", "pad", "crop")


def resize_square(pixels: np.ndarray, size: int, policy: str) -> np.ndarray:
    """Resize to size x size: squash (stretch), pad (keep aspect, black borders) or crop
    (centre square). Pillow's bicubic filter is antialiased when shrinking."""
    image = Image.fromarray(pixels)
    method = Image.Resampling.BICUBIC
    if policy == "squash":
        image = image.resize((size, size), method)
    elif policy == "pad":
        image = ImageOps.pad(image, (size, size), method=method, color=(0, 0, 0))
    elif policy == "crop":
        image = ImageOps.fit(image, (size, size), method=method)
    else:
        raise ValueError(f"unknown resize policy {policy!r}; use one of {RESIZE_POLICIES}")
    return np.asarray(image, dtype=np.uint8)


def prepare_image(path: Path, size: int, policy: str,
                  max_pixels: int | None = None) -> np.ndarray:
    """Decode with the shared rules and resize: what every model input starts from."""
    return resize_square(load_rgb(path, max_pixels), size, policy)


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    return A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])


def train_transform(size: int, mean: Sequence[float], std: Sequence[float],
                    aug: AugmentParams, seed: int) -> A.Compose:
    return A.Compose([
        A.RandomResizedCrop(size=(size, size), scale=(aug.crop_scale_min, 1.0)),
        A.HorizontalFlip(p=aug.hflip),
        A.VerticalFlip(p=aug.vflip),
        A.Rotate(limit=aug.rotate_limit, p=aug.rotate_p),
        A.RandomBrightnessContrast(brightness_limit=aug.brightness_contrast,
                                   contrast_limit=aug.brightness_contrast,
                                   p=aug.brightness_contrast_p),
        A.GaussNoise(std_range=(0.0, aug.noise_std), p=aug.noise_p),
        A.MotionBlur(blur_limit=(3, aug.blur_limit), p=aug.motion_blur_p),
        A.GaussianBlur(blur_limit=(3, aug.blur_limit), p=aug.gaussian_blur_p),
        A.Normalize(mean=mean, std=std),
        ToTensorV2(),
    ], seed=seed)


class ArrayDataset(Dataset):
    """Prepared images from an N x H x W x 3 uint8 .npy file, read through a memory map."""

    def __init__(self, array_path: Path, labels: Sequence[int], transform: A.Compose) -> None:
        self.array_path = Path(array_path)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self._array: np.ndarray | None = None  # opened lazily, once per worker process

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        pixels = np.array(self._array[index])
        return self.transform(image=pixels)["image"], int(self.labels[index])


class FileDataset(Dataset):
    """Images decoded from their files on every access (what prepared arrays avoid)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], size: int, policy: str,
                 transform: A.Compose) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size, self.policy, self.transform = size, policy, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = prepare_image(self.paths[index], self.size, self.policy)
        return self.transform(image=pixels)["image"], int(self.labels[index])
