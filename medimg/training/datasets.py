"""The training split as PyTorch datasets, and the albumentations training augmentations.

Datasets yield uint8 H x W x 3 images; `medimg.inference.normalise` turns a batch into
model input on the device, the same way for training and every prediction."""

from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from medimg.data.prepared import prepare_image
from medimg.params import AugmentParams


def train_transform(size: int, aug: AugmentParams, seed: int) -> A.Compose:
    """The training augmentations, uint8 image in, uint8 image out."""
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
    ], seed=seed)


def as_item(pixels: np.ndarray, transform: A.Compose | None) -> torch.Tensor:
    """One dataset item: the (augmented) uint8 H x W x 3 image as a tensor."""
    if transform is not None:
        pixels = transform(image=pixels)["image"]
    return torch.from_numpy(np.ascontiguousarray(pixels))


class ArrayDataset(Dataset):
    """Prepared images from an N x H x W x 3 uint8 .npy file, read through a memory map,
    augmented by `transform` if given."""

    def __init__(self, array_path: Path, labels: Sequence[int],
                 transform: A.Compose | None = None) -> None:
        self.array_path = Path(array_path)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self._array: np.ndarray | None = None  # opened lazily, once per worker process

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return as_item(np.array(self._array[index]), self.transform), int(self.labels[index])


class FileDataset(Dataset):
    """Images decoded from their files on every access (what prepared arrays avoid)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], size: int, policy: str,
                 transform: A.Compose | None = None) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size, self.policy, self.transform = size, policy, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = prepare_image(self.paths[index], self.size, self.policy)
        return as_item(pixels, self.transform), int(self.labels[index])
