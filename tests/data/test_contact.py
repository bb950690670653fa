"""Contact sheets: pagination, pixels where expected, unreadable files, byte stability."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import noise_image, save
from medimg.data.contact import HEADING_W, MAX_TILES, PAD, Tile, fit_text, write_sheets
from medimg.data.contact import _font as contact_font


def solid(color: tuple[int, int, int], size: tuple[int, int] = (20, 10)) -> np.ndarray:
    return np.full((size[1], size[0], 3), color, dtype=np.uint8)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return [save(tmp_path / "in" / f"img{i}.png", noise_image(i)) for i in range(3)]


def test_pagination_names_and_stale_sheets_removed(tmp_path: Path, images: list[Path]) -> None:
    out = tmp_path / "sheets"
    rows = [(f"row {i}", [Tile(images[i % 3], f"a/b/img{i}.png\nkept")]) for i in range(60)]
    first = write_sheets(out, "pairs", rows, rows_per_sheet=25, tile=32)
    assert [p.name for p in first] == ["pairs_001.png", "pairs_002.png", "pairs_003.png"]
    (out / "other_001.png").write_bytes(b"keep me")
    (out / "pairs_extra.png").write_bytes(b"not a sheet of ours")

    second = write_sheets(out, "pairs", rows[:30], rows_per_sheet=25, tile=32)
    assert [p.name for p in second] == ["pairs_001.png", "pairs_002.png"]
    assert sorted(p.name for p in out.iterdir()) == [
        "other_001.png",
        "pairs_001.png",
        "pairs_002.png",
        "pairs_extra.png",
    ]
    with Image.open(second[0]) as a, Image.open(second[1]) as b:
        assert a.format == b.format == "PNG"
        assert a.width == b.width
        assert a.height > 2 * b.height  # 25 rows against 5
        assert a.width < HEADING_W + MAX_TILES * 64 and a.height < 25 * 100


def test_red_thumbnail_lands_in_its_tile(tmp_path: Path) -> None:
    red = save(tmp_path / "red.png", solid((255, 0, 0), (40, 20)))  # wide: grey bars above/below
    tile = 64
    blue = save(tmp_path / "blue.png", solid((0, 0, 255)))  # noise images hold reddish pixels
    rows = [("first", [Tile(blue, "b")]), ("second", [Tile(blue, "b2"), Tile(red, "r")])]
    (sheet,) = write_sheets(tmp_path, "s", rows, tile=tile)
    pixels = np.asarray(Image.open(sheet).convert("RGB")).astype(int)
    with Image.open(sheet) as image:
        row_h = (image.height - PAD) // 2
    left, top = HEADING_W + (tile + PAD), PAD + row_h  # second row, second tile
    centre = pixels[top + tile // 2, left + tile // 2]
    assert tuple(centre) == (255, 0, 0)
    corner = pixels[top + 2, left + 2]  # letterbox: neutral grey, not red, not black
    assert tuple(corner) == (128, 128, 128)
    is_red = (pixels[..., 0] > 200) & (pixels[..., 1] < 50) & (pixels[..., 2] < 50)
    ys, xs = np.nonzero(is_red)
    assert xs.min() >= left and xs.max() < left + tile
    assert ys.min() >= top and ys.max() < top + tile
    assert is_red.sum() == tile * tile // 2  # aspect kept: 64 x 32


def test_unreadable_file_becomes_a_tile(tmp_path: Path, images: list[Path]) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    missing = tmp_path / "missing.png"
    rows = [("bad", [Tile(broken, "broken.jpg"), Tile(missing, "gone"), Tile(images[0], "ok")])]
    (sheet,) = write_sheets(tmp_path / "out", "bad", rows, tile=48)
    pixels = np.asarray(Image.open(sheet).convert("RGB"))
    cell = pixels[PAD : PAD + 48, HEADING_W : HEADING_W + 48]
    assert (cell == 255).all(axis=-1).any()  # white error text on the grey tile
    assert (cell == 128).all(axis=-1).mean() > 0.5


def test_too_many_pixels_is_unreadable_not_fatal(tmp_path: Path, images: list[Path]) -> None:
    (sheet,) = write_sheets(tmp_path, "big", [("h", [Tile(images[0], "c")])], max_pixels=10)
    assert sheet.exists()


def test_same_inputs_same_bytes(tmp_path: Path, images: list[Path]) -> None:
    rows = [
        ("near  rot90  score 0.991", [Tile(p, f"Training/glioma/{p.name}\nkept") for p in images])
    ]
    a = write_sheets(tmp_path / "a", "s", rows, tile=40)
    b = write_sheets(tmp_path / "b", "s", rows, tile=40)
    assert a[0].read_bytes() == b[0].read_bytes()
    assert b"tIME" not in a[0].read_bytes()
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_long_rows_are_cut_at_eight(tmp_path: Path, images: list[Path]) -> None:
    red = save(tmp_path / "red.png", solid((255, 0, 0)))
    long = [Tile(images[0], str(i)) for i in range(MAX_TILES)] + [Tile(red, "ninth")] * 3
    (sheet,) = write_sheets(tmp_path, "long", [("many", long)], tile=32)
    with Image.open(sheet) as image:
        assert image.width == HEADING_W + MAX_TILES * (32 + PAD) + PAD
        pixels = np.asarray(image.convert("RGB"))
    assert not ((pixels == (255, 0, 0)).all(axis=-1)).any()  # tiles past 8 not drawn


def test_no_rows_writes_nothing(tmp_path: Path, images: list[Path]) -> None:
    write_sheets(tmp_path, "s", [("h", [Tile(images[0], "c")])])
    assert write_sheets(tmp_path, "s", []) == []
    assert not list(tmp_path.glob("s_*.png"))


def test_fit_text_keeps_the_file_name() -> None:
    font = contact_font()
    text = "Training/glioma_tumor/some/very/deep/folder/image_0042.jpg"
    short = fit_text(text, 80, font)
    assert short.startswith("…") and short.endswith("image_0042.jpg"[-6:])
    assert font.getlength(short) <= 80
    assert fit_text("abc", 80, font) == "abc"
