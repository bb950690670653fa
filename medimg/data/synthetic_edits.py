"""Edits that make copies of an image the way datasets acquire them: turned, flipped,
cropped (centred or anywhere, as RandomResizedCrop does), padded, captioned, slightly
rotated, resized, re-compressed, brightened, and two of these at once. Each takes an RGB
Pillow image and a seeded generator and returns the edited image."""

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


def crop(share: float, centred: bool = True) -> Edit:
    """Keep `share` of each side (centred, or at a random place) and resize back."""
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = image.size
        keep_w, keep_h = round(width * share), round(height * share)
        x = (width - keep_w) // 2 if centred else int(rng.integers(0, width - keep_w + 1))
        y = (height - keep_h) // 2 if centred else int(rng.integers(0, height - keep_h + 1))
        box = (x, y, x + keep_w, y + keep_h)
        return image.crop(box).resize((width, height), Image.Resampling.BILINEAR)
    return edit


def crop_anywhere(low: float, high: float) -> Edit:
    """Keep a share of each side drawn from [low, high], at a random place, resized back."""
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return crop(float(rng.uniform(low, high)), centred=False)(image, rng)
    return edit


def brightness(factor: float) -> Edit:
    return lambda image, rng: ImageEnhance.Brightness(image).enhance(factor)


def both(first: Edit, second: Edit) -> Edit:
    """`first`, then `second` on its result."""
    return lambda image, rng: second(first(image, rng), rng)


def border(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A black border of a different width (5 to 40 px) on each side."""
    left, top, right, bottom = (int(v) for v in rng.integers(5, 41, 4))
    canvas = Image.new("RGB", (image.width + left + right, image.height + top + bottom))
    canvas.paste(image, (left, top))
    return canvas


def caption(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """White burnt-in text in a random corner, about 1/20 of the height."""
    out = image.copy()
    font = ImageFont.load_default(size=max(10, image.height // 20))
    corner = int(rng.integers(0, 4))
    x = 5 if corner % 2 == 0 else int(image.width * 0.55)
    y = 5 if corner < 2 else int(image.height * 0.9)
    ImageDraw.Draw(out).text((x, y), f"L  {int(rng.integers(1, 40))}/24  T1", fill="white",
                             font=font)
    return out


def small_rotation(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Turned by 3 to 10 degrees either way, within the same frame."""
    degrees = float(rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 10.0))
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR)


def resize(share: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        size = (max(1, round(image.width * share)), max(1, round(image.height * share)))
        return image.resize(size, Image.Resampling.LANCZOS)
    return edit


def jpeg(quality: int) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert("RGB")
    return edit


def gamma(value: float) -> Edit:
    def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        scaled = (np.asarray(image, dtype=np.float64) / 255.0) ** value
        return Image.fromarray(np.rint(scaled * 255.0).astype(np.uint8))
    return edit


def transposed(method: Image.Transpose) -> Edit:
    return lambda image, rng: image.transpose(method)


EDITS: dict[str, Edit] = {
    "rot90": transposed(Image.Transpose.ROTATE_90),
    "rot180": transposed(Image.Transpose.ROTATE_180),
    "rot270": transposed(Image.Transpose.ROTATE_270),
    "hflip": transposed(Image.Transpose.FLIP_LEFT_RIGHT),
    "vflip": transposed(Image.Transpose.FLIP_TOP_BOTTOM),
    "transpose": transposed(Image.Transpose.TRANSPOSE),
    "transverse": transposed(Image.Transpose.TRANSVERSE),
    "crop 90%": crop(0.9),
    "crop 80%": crop(0.8),
    "crop 80% off-centre": crop(0.8, centred=False),
    "asymmetric border": border,
    "text caption": caption,
    "rotate 3-10 degrees": small_rotation,
    "resize 50%": resize(0.5),
    "resize 75%": resize(0.75),
    "JPEG q40": jpeg(40),
    "gamma 0.8": gamma(0.8),
    "PNG re-encode": lambda image, rng: image,
    "crop 70-95% anywhere": crop_anywhere(0.7, 0.95),
    "crop 70% anywhere": crop(0.7, centred=False),
}
TWO_EDITS: dict[str, Edit] = {
    "hflip + crop 70-95% anywhere": both(EDITS["hflip"], crop_anywhere(0.7, 0.95)),
    "rot270 + crop 70-95% anywhere": both(EDITS["rot270"], crop_anywhere(0.7, 0.95)),
    "crop 70-95% anywhere + brightness +20%": both(crop_anywhere(0.7, 0.95), brightness(1.2)),
    "crop 70-95% anywhere + JPEG q40": both(crop_anywhere(0.7, 0.95), jpeg(40)),
    "rot90 + text caption": both(EDITS["rot90"], caption),
    "rotate 3-10 degrees + text caption": both(small_rotation, caption),
    "asymmetric border + rotate 3-10 degrees": both(border, small_rotation),
    "transpose + asymmetric border": both(EDITS["transpose"], border),
}
ALL_EDITS = {**EDITS, **TWO_EDITS}
