import numpy as np
import pytest
import yaml

import sample
from conftest import REPO
from medimg.params import SampleParams
from sample import image_tiles, slab_of, tissue_fraction, volume_slices

PARAMS = SampleParams(min_foreground=0.1, slab_size=3, slab_gap=1, tile_size=10,
                      tile_stride=5, region_size=20, min_tissue=0.5)


def test_slabs_leave_a_gap_between_neighbours() -> None:
    assert [slab_of(i, 3, 1) for i in range(9)] == [0, 0, 0, None, 1, 1, 1, None, 2]
    assert [slab_of(i, 2, 0) for i in range(4)] == [0, 0, 1, 1]


def test_tissue_fraction_separates_stain_from_background() -> None:
    white = np.full((10, 10, 3), 245, dtype=np.uint8)
    stained = np.zeros((10, 10, 3), dtype=np.uint8)
    stained[...] = (150, 60, 160)
    assert tissue_fraction(white) == 0.0
    assert tissue_fraction(stained) == 1.0


def test_overlapping_tiles_stay_inside_one_region_group() -> None:
    pixels = np.zeros((45, 60, 3), dtype=np.uint8)
    pixels[...] = (150, 60, 160)
    pixels[:20, :20] = 250  # region r0c0 is background: skipped
    tiles = list(image_tiles(pixels, "img", PARAMS))
    assert {t.group for t in tiles} == {"img-r0c1", "img-r0c2", "img-r1c0", "img-r1c1",
                                        "img-r1c2"}
    assert len(tiles) == 5 * 9
    for tile in tiles:
        y, x = (int(part[1:]) for part in tile.relpath[:-4].rsplit("_", 2)[1:])
        region = f"img-r{y // 20}c{x // 20}"
        assert tile.group == region and y % 20 <= 10 and x % 20 <= 10
        assert tile.pixels.shape == (10, 10, 3)


def test_empty_slices_are_skipped_and_slabs_named() -> None:
    volume = np.zeros((8, 12, 12), dtype=np.uint8)
    volume[2:7, 3:9, 3:9] = 200
    slices = list(volume_slices(volume, "vol", (0,), PARAMS))
    assert [s.relpath for s in slices] == [f"mri/vol_sagittal_{i:03d}.png" for i in (2, 4, 5, 6)]
    assert [s.group for s in slices] == ["vol-sagittal-slab00"] + ["vol-sagittal-slab01"] * 3


@pytest.mark.parametrize("stop", [None, 4])
def test_sagittal_stop_limits_only_the_sagittal_plane(stop) -> None:
    volume = np.full((8, 8, 8), 200, dtype=np.uint8)
    slices = list(volume_slices(volume, "vol", (0, 1), PARAMS, sagittal_stop=stop))
    sagittal = [s for s in slices if "sagittal" in s.relpath]
    coronal = [s for s in slices if "coronal" in s.relpath]
    assert len(sagittal) == (3 if stop else 6) and len(coronal) == 6


def test_sample_builds_nothing_when_raw_dir_points_elsewhere(tmp_path, monkeypatch) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["raw_dir"] = "/data/study"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data/sample/mri").mkdir(parents=True)  # from an earlier default run
    monkeypatch.chdir(tmp_path)
    sample.main()
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert written == ["data", "data/sample", "data/sample/NOT_BUILT.txt", "params.yaml"]
    assert "/data/study" in (tmp_path / "data/sample/NOT_BUILT.txt").read_text()
