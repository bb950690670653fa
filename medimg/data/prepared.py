"""How an image file becomes a model input: decoded by the shared rules, then resized to a
square by the prepare stage's policy. The prepare stage stores them; evaluate, predict
and the service resize the same way."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medimg.data.images import DEFAULT_MAX_PIXELS, load_rgb

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
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode with the shared rules and resize: what every model input starts from."""
    return resize_square(load_rgb(path, max_pixels), size, policy)
