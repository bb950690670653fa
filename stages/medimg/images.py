"""Image decoding with one set of rules for every stage: EXIF orientation, any mode to
8-bit RGB, a pixel limit against decompression bombs, and a clear reason on failure."""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"})

# Pillow's own decompression-bomb guard, the starting value of dedup.max_pixels and the
# limit predict applies. Our limit decides: Pillow's global guard would raise first.
DEFAULT_MAX_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    """An input file that cannot be used as an image; the message is the reason."""


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _to_8bit(image: Image.Image) -> Image.Image:
    # 16-bit and float greyscale: scale the used range to 0..255 instead of clipping.
    values = np.asarray(image, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # H x W x 3, uint8, upright
    format: str  # as stored: JPEG, PNG, ...
    mode: str  # Pillow mode before conversion: L, RGBA, I;16, CMYK, ...


def load_image(path: Path | str, max_pixels: int | None = None,
               draft: int | None = None) -> Decoded:
    """Decode an image file to upright 8-bit RGB, or raise ImageError with a reason.

    With `draft`, a JPEG may be decoded at a reduced scale whose sides stay at least
    `draft` pixels (for previews; every stage decodes at full size)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageError(f"too many pixels ({width}x{height} > {max_pixels})")
                if draft is not None:
                    image.draft(image.mode, (draft, draft))
                image.load()
                stored_format, stored_mode = image.format or "", image.mode
                ImageOps.exif_transpose(image, in_place=True)
                pixels = np.asarray(to_rgb(image), dtype=np.uint8)
                return Decoded(pixels=pixels, format=stored_format, mode=stored_mode)
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError("not a recognised image") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"unreadable image: {err}") from err


def load_rgb(path: Path | str, max_pixels: int | None = None,
             draft: int | None = None) -> np.ndarray:
    """Decode an image file to an H x W x 3 uint8 array, or raise ImageError with a reason."""
    return load_image(path, max_pixels, draft).pixels
