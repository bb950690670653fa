"""Datasets and albumentations transforms for training and evaluation."""

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from medimg.images import load_rgb
from medimg.params import AugmentParams


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    return A.Compose([
        A.Resize(size, size, interpolation=1),
        A.Normalize(mean=mean, std=std),
        ToTensorV2(),
    ])


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
        A.Normalize(mean=mean, std=std),
        ToTensorV2(),
    ], seed=seed)


class ImageDataset(Dataset):
    """Images listed by path with integer labels, decoded by the shared rules."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: A.Compose,
                 max_pixels: int | None = None) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = load_rgb(self.paths[index], self.max_pixels)
        return self.transform(image=pixels)["image"], int(self.labels[index])
