"""Stage `sample`: build the default dataset from real images that ship inside packages.

Brain MRI slices come from nilearn's MNI152 T1 template and nibabel's example4d fMRI
volume; histopathology tiles from stardist's H&E `histo.jpg` and scikit-image's `ihc.png`.
Each image gets a group id (volume + plane + slab, or image + region) in groups.csv, so
the split can keep correlated images together; pseudonym.key holds the fixed key of
their pseudonyms. When data.raw_dir points at other data,
the stage costs nothing: it writes only a note saying why no sample was built.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

from medimg.data.volumes import brain_slices, to_uint8
from medimg.errors import run
from medimg.io import atomic_dir
from medimg.params import SampleParams, load_params

OUT_DIR = Path("data/sample")
GROUPS_FILE = "groups.csv"
MRI_CLASS = "mri"
HISTO_CLASS = "breast_histo"
# The key of the sample's pseudonyms (medimg.data.pseudonyms): fixed, so that the sample
# reproduces; its group ids are public anyway.
SAMPLE_KEY = hashlib.sha256(b"medimg sample").hexdigest()


@dataclass(frozen=True)
class SampleImage:
    relpath: str
    group: str
    source: str
    pixels: np.ndarray


def mni152_path() -> Path:
    return Path(str(files("nilearn") / "datasets" / "data"
                    / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))


def example4d_path() -> Path:
    return Path(str(files("nibabel") / "tests" / "data" / "example4d.nii.gz"))


def histo_paths() -> dict[str, Path]:
    return {
        "stardist_histo": Path(str(files("stardist") / "data" / "images" / "histo.jpg")),
        "skimage_ihc": Path(str(files("skimage") / "data" / "ihc.png")),
    }


def slab_of(index: int, slab_size: int, slab_gap: int) -> int | None:
    """Slab number of a slice, or None for slices in the gap between two slabs."""
    slab, position = divmod(index, slab_size + slab_gap)
    return slab if position < slab_size else None


def volume_slices(volume: np.ndarray, name: str, planes: tuple[int, ...],
                  params: SampleParams, sagittal_stop: int | None = None) -> Iterator[SampleImage]:
    stops = {} if sagittal_stop is None else {0: sagittal_stop}
    for plane, index, pixels in brain_slices(volume, planes, params.min_foreground, stops):
        slab = slab_of(index, params.slab_size, params.slab_gap)
        if slab is None:
            continue
        yield SampleImage(
            relpath=f"{MRI_CLASS}/{name}_{plane}_{index:03d}.png",
            group=f"{name}-{plane}-slab{slab:02d}",
            source=name,
            pixels=np.ascontiguousarray(pixels),
        )


def mri_images(params: SampleParams) -> Iterator[SampleImage]:
    mni = np.asarray(nib.load(mni152_path()).dataobj)
    # The template is left-right symmetric: a sagittal slice and its mirror are the same
    # image, so sagittal slices stop at the midline.
    midline = mni.shape[0] // 2 + 1
    yield from volume_slices(to_uint8(mni), "mni152", (0, 1, 2), params, sagittal_stop=midline)
    # example4d has 2 x 2 mm pixels only in the axial plane (slices are 2.2 mm apart and
    # 24 deep), and its two time points are near-identical: use the first, axially.
    fmri = np.asarray(nib.load(example4d_path()).dataobj)[..., 0]
    yield from volume_slices(to_uint8(fmri), "example4d", (2,), params)


def tissue_fraction(tile: np.ndarray) -> float:
    """Share of pixels that are stained tissue rather than bright, unsaturated background."""
    rgb = tile.astype(np.float64)
    brightest = rgb.max(axis=2)
    saturation = (brightest - rgb.min(axis=2)) / np.maximum(brightest, 1.0)
    return float(((saturation > 0.08) & (rgb.mean(axis=2) < 230)).mean())


def image_tiles(pixels: np.ndarray, name: str, params: SampleParams) -> Iterator[SampleImage]:
    region, tile, stride = params.region_size, params.tile_size, params.tile_stride
    height, width = pixels.shape[:2]
    for top in range(0, height - region + 1, region):
        for left in range(0, width - region + 1, region):
            group = f"{name}-r{top // region}c{left // region}"
            for y in range(top, top + region - tile + 1, stride):
                for x in range(left, left + region - tile + 1, stride):
                    crop = pixels[y:y + tile, x:x + tile]
                    if tissue_fraction(crop) < params.min_tissue:
                        continue
                    yield SampleImage(
                        relpath=f"{HISTO_CLASS}/{name}_y{y:03d}_x{x:03d}.png",
                        group=group,
                        source=name,
                        pixels=np.ascontiguousarray(crop),
                    )


def histo_images(params: SampleParams) -> Iterator[SampleImage]:
    for name, path in histo_paths().items():
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        yield from image_tiles(pixels, name, params)


def write_sample(out_dir: Path, params: SampleParams, key_file: str) -> pd.DataFrame:
    rows = []
    with atomic_dir(out_dir) as tmp:
        (tmp / key_file).write_text(SAMPLE_KEY + "\n", encoding="ascii")
        for item in [*mri_images(params), *histo_images(params)]:
            target = tmp / item.relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(item.pixels).save(target, format="PNG")
            rows.append({"path": item.relpath, "group": item.group, "source": item.source})
        table = pd.DataFrame(rows)
        table.to_csv(tmp / GROUPS_FILE, index=False, lineterminator="\n")
    return table


def main() -> None:
    params = load_params()
    if Path(params.data.raw_dir) != OUT_DIR:
        with atomic_dir(OUT_DIR) as tmp:
            (tmp / "NOT_BUILT.txt").write_text(
                f"No sample was built: data.raw_dir is {params.data.raw_dir}.\n")
        print(f"sample: skipped, data.raw_dir is {params.data.raw_dir}")
        return
    table = write_sample(OUT_DIR, params.sample, params.data.key_file)
    counts = table.groupby(table["path"].str.split("/").str[0]).size().to_dict()
    print(f"sample: wrote {len(table)} images in {table['group'].nunique()} groups: {counts}")


if __name__ == "__main__":
    run(main)
