"""Reference image sets that ship inside the project's packages, for out-of-distribution
detection: what the detector learns from, and what it is scored on.

Each set is a dict from a name to a uint8 H x W x 3 image. A name is the source file inside
its package (`skimage/data/moon.png`), with `#<part>` after it when one file gives several
images (a slice of a volume, a crop, a text page), so `source_file(name)` tells which file
it came from and the sets can be checked to share no file:

- `everyday()`: 19 photographs and graphics of scikit-image (astronaut, camera, cat, coffee,
  rocket, horse silhouette, motorcycle, coins, colour wheel, brick, grass, gravel, the Moon,
  the Hubble deep field, a logo, a chessboard, a clock, a page and text). Evaluation only.
- `other_modalities()`: 10 images that are neither class: scikit-image's retina photograph,
  retinal angiogram crop, cell in phase contrast and Shepp-Logan phantom; stardist's
  fluorescent nuclei; pydicom's CT slices (`CT_small`, a head CT), a nuclear-medicine bone
  scan (`JPEG2000`) and two ultrasound images. Evaluation only.
- `external_mri()`: 101 brain MRI slices from subjects and scanners the sample never uses:
  nibabel's 2 mm T1 `anatomical.nii` in three planes (99), matplotlib's `s1045.ima` and
  pydicom's `MR_small.dcm`. In-distribution: part of the detector's fitting set, so that
  "MRI" means more than the sample's two volumes (the ood stage reports each file left
  out). No histopathology besides the two slides the sample already tiles ships in a
  package, so the set is MRI only.
- `outlier_exposure(count, seed)`: what the detector is fitted against: sklearn's china and
  flower photographs and matplotlib's Grace Hopper (whole and cropped), matplotlib's logos
  and toolbar icons, networkx's and sympy's test plots, pages of text rendered in
  matplotlib's DejaVu fonts and scikit-image's 200 LFW crops (faces and other patches).
  No file of it is in an evaluation set.
"""

import gzip
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medimg.data.images import load_rgb, stretch
from medimg.data.prepared import resize_square
from medimg.data.volumes import brain_slices
from medimg.training.models import ModelConfig

MIN_FOREGROUND = 0.10  # an MRI slice counts when at least this share of it is brain
EVERYDAY_FILES = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "chessboard_RGB.png",
    "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png",
    "horse.png", "hubble_deep_field.jpg", "logo.png", "moon.png", "motorcycle_left.png",
    "page.png", "rocket.jpg", "text.png")
OTHER_SKIMAGE = ("retina.jpg", "microaneurysms.png", "cell.png", "phantom.png")
OTHER_DICOM = ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000.dcm",
               "examples_rgb_color.dcm", "examples_palette.dcm")
PHOTOS = ("sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg",
          "matplotlib/mpl-data/sample_data/grace_hopper.jpg")
GRAPHICS = ("matplotlib/mpl-data/sample_data/logo2.png",
            "matplotlib/mpl-data/sample_data/Minduka_Present_Blue_Pack.png",
            *(f"matplotlib/mpl-data/images/{icon}_large.png" for icon in (
                "back", "filesave", "forward", "help", "home", "matplotlib", "move",
                "qt4_editor_options", "subplots", "zoom_to_rect")),
            *(f"networkx/drawing/tests/baseline/test_{plot}.png" for plot in (
                "display_complex", "display_house_with_colors", "display_labels_and_colors",
                "display_shortest_path", "house_with_colors")),
            *(f"sympy/plotting/tests/test_region_{op}.png" for op in ("and", "not", "or", "xor")))
FONTS = tuple(f"matplotlib/mpl-data/fonts/ttf/{font}.ttf" for font in (
    "DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "DejaVuSans-Bold"))
FACES = "skimage/data/lfw_subset.npy"
WORDS = ("the quick brown fox jumps over the lazy dog while five boxing wizards jump quickly "
         "sphinx of black quartz judge my vow 0123456789 invoice total due page of report "
         "meeting notes agenda chapter section figure table results discussion")


def package_file(name: str) -> Path:
    """A file inside an installed package, named `package/path/inside/it`."""
    package, _, inside = name.partition("/")
    return Path(str(files(package).joinpath(inside)))


def source_file(name: str) -> str:
    """The package file a reference image came from."""
    return name.split("#")[0]


def model_inputs(images: dict[str, np.ndarray], config: ModelConfig) -> np.ndarray:
    """A set's images resized as the model's inputs are (the model's model.json)."""
    return np.stack([resize_square(pixels, config.image_size, config.resize)
                     for pixels in images.values()])


def everyday() -> dict[str, np.ndarray]:
    names = [f"skimage/data/{file}" for file in EVERYDAY_FILES]
    return {name: load_rgb(package_file(name)) for name in names}


def other_modalities() -> dict[str, np.ndarray]:
    names = ([f"skimage/data/{file}" for file in OTHER_SKIMAGE]
             + ["stardist/data/images/img2d.tif"]
             + [f"pydicom/data/test_files/{file}" for file in OTHER_DICOM])
    return {name: load_rgb(package_file(name)) for name in names}


def grey_rgb(values: np.ndarray) -> np.ndarray:
    """A greyscale array to uint8 RGB, its top 0.5% clipped so one hot voxel cannot darken
    the rest."""
    values = np.asarray(values, dtype=np.float64)
    grey = stretch(np.minimum(values, np.percentile(values, 99.5)))
    return np.repeat(grey[..., None], 3, axis=2)


def volume_slices(name: str, volume: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """Every slice in the three planes with enough brain, as uint8 RGB."""
    for plane, index, pixels in brain_slices(volume, (0, 1, 2), MIN_FOREGROUND):
        yield f"{name}#{plane}{index:03d}", grey_rgb(pixels)


def external_mri() -> dict[str, np.ndarray]:
    anatomical = "nibabel/tests/data/anatomical.nii"
    volume = np.asarray(nib.load(package_file(anatomical)).dataobj, dtype=np.float64)
    images = dict(volume_slices(anatomical, volume))
    slice_1045 = "matplotlib/mpl-data/sample_data/s1045.ima.gz"
    # A raw 256 x 256 big-endian 16-bit slice, as matplotlib's own MRI example reads it.
    raw = gzip.decompress(package_file(slice_1045).read_bytes())
    images[slice_1045] = grey_rgb(np.frombuffer(raw, ">u2").reshape(256, 256))
    mr_small = "pydicom/data/test_files/MR_small.dcm"
    images[mr_small] = load_rgb(package_file(mr_small))
    return images


def text_page(font: Path, seed: int, size: int = 256) -> np.ndarray:
    """Random words in `font`, dark on light or light on dark, in lines like a page."""
    rng = np.random.default_rng(seed)
    light = bool(rng.random() < 0.8)
    ink, paper = ((20, 20, 20), (250, 250, 245)) if light else ((240, 240, 240), (30, 30, 60))
    image = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(image)
    typeface = ImageFont.truetype(str(font), int(rng.integers(10, 28)))
    top = int(rng.integers(0, 12))
    while top < size:
        line = " ".join(rng.choice(WORDS.split(), size=8))
        draw.text((int(rng.integers(0, 16)), top), line, fill=ink, font=typeface)
        top += int(typeface.size * rng.uniform(1.2, 1.8))
    return np.asarray(image)


def faces() -> dict[str, np.ndarray]:
    """scikit-image's 200 LFW crops (100 faces, 100 other patches), 25 x 25 greyscale."""
    crops = np.load(package_file(FACES))
    return {f"{FACES}#{index:03d}": grey_rgb(crop) for index, crop in enumerate(crops)}


def random_crop(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A square crop of 30 to 100% of the shorter side, not blank (plots and icons have
    empty margins), sometimes grey or flipped."""
    height, width = pixels.shape[:2]
    crop = pixels
    for _ in range(10):
        side = int(min(height, width) * rng.uniform(0.3, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = pixels[top:top + side, left:left + side]
        if crop.std() > 2.0:
            break
    if rng.random() < 0.3:
        crop = np.repeat(crop.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def outlier_exposure(count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` images: the photographs and graphics whole, then crops of them, text pages
    and faces in turn (crops once the 200 faces are used up), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    sources = {name: load_rgb(package_file(name)) for name in (*PHOTOS, *GRAPHICS)}
    images = dict(list(sources.items())[:count])
    unused_faces = list(faces().items())
    unused_faces = [unused_faces[i] for i in rng.permutation(len(unused_faces))]
    for index in range(count - len(images)):
        if index % 3 == 1:
            font = FONTS[rng.integers(len(FONTS))]
            images[f"{font}#page{index:04d}"] = text_page(package_file(font),
                                                          int(rng.integers(2**31)))
        elif index % 3 == 2 and unused_faces:
            name, face = unused_faces.pop()
            images[name] = face
        else:
            name = list(sources)[rng.integers(len(sources))]
            images[f"{name}#crop{index:04d}"] = random_crop(sources[name], rng)
    return images
