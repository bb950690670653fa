"""Contact sheets: the grid of blocks, whole paths under the tiles, pagination, unreadable
files, byte stability. The layout is checked on the rendered page (exact pixels); the
files are JPEG, so what is read back from them is checked within a tolerance."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import noise_image, save
from medimg.data.contact import (
    GAP,
    LINE_H,
    MARGIN,
    MAX_TILES,
    PAD,
    PAGE_WIDTH,
    TILE_BG,
    Tile,
    render_page,
    wrap_text,
    write_sheets,
)
from medimg.data.contact import _font as contact_font

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (20, 10)) -> np.ndarray:
    return np.full((size[1], size[0], 3), color, dtype=np.uint8)


def colours(tmp_path: Path, count: int) -> list[tuple[tuple[int, int, int], Path]]:
    """Square images of distinct saturated colours that no text or grey can take."""
    made = []
    for i in range(count):
        colour = (255, 40 + 8 * i, 0) if i % 2 else (0, 40 + 8 * i, 255)
        made.append((colour, save(tmp_path / "colours" / f"c{i}.png", solid(colour, (16, 16)))))
    return made


def box(pixels: np.ndarray, colour: tuple[int, int, int]) -> Box | None:
    ys, xs = np.nonzero((pixels == colour).all(axis=-1))
    return None if len(xs) == 0 else (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def read(sheet: Path) -> np.ndarray:
    with Image.open(sheet) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def page(blocks: list, tile: int, max_pixels: int | None = None) -> np.ndarray:
    return np.asarray(render_page(blocks, tile, max_pixels)).astype(int)


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    """Where a page read back from its JPEG file shows about `colour`."""
    return (np.abs(pixels - np.array(colour)) <= tolerance).all(axis=-1)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return [save(tmp_path / "in" / f"img{i}.png", noise_image(i)) for i in range(3)]


def test_whole_path_is_under_each_tile(tmp_path: Path) -> None:
    font = contact_font()
    path = "Training/glioma_tumor/some/very/deep/folder with spaces/gg (681) of a scan.jpg"
    lines = wrap_text(f"{path}\nremoved", 120, font)
    assert len(lines) > 3 and lines[-1] == "removed"
    assert "".join(lines[:-1]) == path  # every character, none replaced by an ellipsis
    assert all(font.getlength(line) <= 120 for line in lines)
    assert all(line.endswith(("/", " ")) for line in lines[:-2])  # broken after / or space
    unbroken = "x" * 200
    assert "".join(wrap_text(unbroken, 120, font)) == unbroken  # hard-wrapped by characters
    assert wrap_text("Training/a.jpg", 256, font) == ["Training/a.jpg"]

    ((_, image),) = colours(tmp_path, 1)
    heights = []
    for name in ("a.png", path):
        heights.append(page([("h", [Tile(image, f"{name}\nkept")])], 120).shape[0])
    assert heights[1] - heights[0] == (len(wrap_text(path, 120, font)) - 1) * LINE_H


def test_blocks_fill_the_page_width_before_wrapping(tmp_path: Path) -> None:
    tile = 200
    made = colours(tmp_path, 16)
    blocks = [(f"pair {i}", [Tile(made[2 * i][1], "a/kept.png\nkept"),
                             Tile(made[2 * i + 1][1], "a/removed.png\nremoved")])
              for i in range(8)]
    pixels = page(blocks, tile)
    assert pixels.shape[1] == PAGE_WIDTH
    boxes = [box(pixels, colour) for colour, _ in made]
    assert all(b is not None and (b[2] - b[0], b[3] - b[1]) == (tile, tile) for b in boxes)
    block_w = PAD + 2 * (tile + PAD)
    per_line = (PAGE_WIDTH - 2 * MARGIN + GAP) // (block_w + GAP)
    assert per_line >= 3
    lines = sorted({b[1] for b in boxes})
    assert len(lines) == -(-8 // per_line)
    for i in range(8):
        kept, removed = boxes[2 * i], boxes[2 * i + 1]
        assert kept[1] == removed[1] == lines[i // per_line]  # a pair side by side
        assert removed[0] == kept[2] + PAD
        assert kept[0] == boxes[2 * (i % per_line)][0]  # wrapped lines start at the left
        if i % per_line:
            assert kept[0] == boxes[2 * i - 1][2] + PAD + GAP + PAD  # right of the last block
    last_right = boxes[2 * per_line - 1][2]
    assert last_right + PAD + GAP + block_w > PAGE_WIDTH - MARGIN  # the next did not fit


def test_a_long_group_wraps_its_tiles(tmp_path: Path) -> None:
    tile = 200
    made = colours(tmp_path, 12)
    group = [Tile(image, f"Training/x/{i}.png\nglioma") for i, (_, image) in enumerate(made)]
    pixels = page([("12 images, 1 class", group)], tile)
    boxes = [box(pixels, colour) for colour, _ in made]
    columns = (PAGE_WIDTH - 2 * MARGIN - PAD) // (tile + PAD)
    assert 1 < columns < 12
    tops = sorted({b[1] for b in boxes})
    assert len(tops) == -(-12 // columns)
    for i, b in enumerate(boxes):
        assert b[1] == tops[i // columns]
        assert b[0] == boxes[i % columns][0]
    assert boxes[columns - 1][2] <= PAGE_WIDTH - MARGIN


def test_tiles_in_a_line_are_aligned(tmp_path: Path) -> None:
    made = colours(tmp_path, 4)
    deep = "Training/glioma_tumor/" + "deeper/" * 12 + "scan.png"
    blocks = [("one line", [Tile(made[0][1], f"{deep}\nkept")]),
              ("three\nline\nheading", [Tile(made[1][1], "b.png\nkept")]),
              ("one", [Tile(made[2][1], "c.png\nkept"), Tile(made[3][1], "d.png\nkept")])]
    pixels = page(blocks, 64)
    tops = {box(pixels, colour)[1] for colour, _ in made}
    assert len(tops) == 1  # headings of 1 and 3 lines, captions of 2 and many: one top
    caption = len(wrap_text(f"{deep}\nkept", 64, contact_font()))
    assert pixels.shape[0] >= tops.pop() + 64 + caption * LINE_H + PAD + MARGIN


def test_pages_hold_whole_blocks_within_the_tile_budget(tmp_path: Path,
                                                       images: list[Path]) -> None:
    out = tmp_path / "sheets"
    blocks = [(f"block {i}", [Tile(images[i % 3], f"a/b/img{i}.png\nkept")]) for i in range(60)]
    first = write_sheets(out, "pairs", blocks, tiles_per_sheet=25, tile=32)
    assert [p.name for p in first] == ["pairs_001.jpg", "pairs_002.jpg", "pairs_003.jpg"]
    (out / "other_001.jpg").write_bytes(b"keep me")
    (out / "pairs_extra.jpg").write_bytes(b"not a sheet of ours")

    second = write_sheets(out, "pairs", blocks[:30], tiles_per_sheet=25, tile=32)
    assert [p.name for p in second] == ["pairs_001.jpg", "pairs_002.jpg"]
    assert sorted(p.name for p in out.iterdir()) == [
        "other_001.jpg",
        "pairs_001.jpg",
        "pairs_002.jpg",
        "pairs_extra.jpg",
    ]
    with Image.open(second[0]) as a, Image.open(second[1]) as b:
        assert a.format == b.format == "JPEG"
        assert a.width == b.width == PAGE_WIDTH

    groups = [("three", [Tile(images[0], "x")] * 3)] * 3 + [("big", [Tile(images[1], "y")] * 9)]
    paged = write_sheets(tmp_path / "groups", "g", groups, tiles_per_sheet=7, tile=32)
    assert len(paged) == 3  # 3 + 3, then 3, then the group of 9 alone: never split


def test_red_thumbnail_lands_in_its_tile(tmp_path: Path) -> None:
    red = save(tmp_path / "red.png", solid((255, 0, 0), (40, 20)))  # wide: grey bars above/below
    blue = save(tmp_path / "blue.png", solid((0, 0, 255), (10, 10)))  # noise holds reddish pixels
    tile = 64
    blocks = [("first", [Tile(blue, "b")]), ("second", [Tile(blue, "b2"), Tile(red, "r")])]
    pixels = page(blocks, tile)
    left, top, right, bottom = box(pixels, (0, 0, 255))  # both blues, one line
    assert bottom - top == tile and right - left > 2 * tile
    is_red = (pixels[..., 0] > 200) & (pixels[..., 1] < 50) & (pixels[..., 2] < 50)
    ys, xs = np.nonzero(is_red)
    assert xs.min() == right + PAD and xs.max() == right + PAD + tile - 1  # after the blue
    assert ys.min() == top + tile // 4 and ys.max() == top + 3 * tile // 4 - 1
    assert is_red.sum() == tile * tile // 2  # aspect kept: 64 x 32
    corner = pixels[top + 2, right + PAD + 2]  # letterbox: neutral grey, not red, not black
    assert tuple(corner) == TILE_BG


def test_unreadable_file_becomes_a_tile(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    missing = tmp_path / "missing.png"
    blue = save(tmp_path / "blue.png", solid((0, 0, 255), (10, 10)))
    blocks = [("bad", [Tile(broken, "broken.jpg"), Tile(missing, "gone"), Tile(blue, "ok")])]
    pixels = page(blocks, 96)
    left, top, _, bottom = box(pixels, (0, 0, 255))
    cells = pixels[top:bottom, left - 2 * (96 + PAD) : left - PAD]  # the two tiles before it
    assert (cells == 255).all(axis=-1).any()  # white error text on the grey tiles
    assert (cells == TILE_BG).all(axis=-1).mean() > 0.5


def test_too_many_pixels_is_unreadable_not_fatal(tmp_path: Path, images: list[Path]) -> None:
    (sheet,) = write_sheets(tmp_path, "big", [("h", [Tile(images[0], "c")])], max_pixels=10)
    assert near(read(sheet), (255, 255, 255), 10).any()  # the error tile's white text


def test_same_inputs_same_bytes(tmp_path: Path, images: list[Path]) -> None:
    blocks = [
        ("near  rot90  score 0.991", [Tile(p, f"Training/glioma/{p.name}\nkept") for p in images])
    ] * 3
    a = write_sheets(tmp_path / "a", "s", blocks, tiles_per_sheet=3, tile=40)
    b = write_sheets(tmp_path / "b", "s", blocks, tiles_per_sheet=3, tile=40, workers=2)
    assert len(a) == 3
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    shown = read(a[0])  # the file is the rendered page, within JPEG's loss
    assert np.abs(shown - page(blocks[:1], 40)).mean() < 3
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_groups_past_the_cap_are_left_out(tmp_path: Path, images: list[Path]) -> None:
    red = save(tmp_path / "red.png", solid((255, 0, 0)))
    long = [Tile(images[0], str(i)) for i in range(MAX_TILES)] + [Tile(red, "past")] * 3
    pixels = page([("many", long)], 32)
    assert not ((pixels == (255, 0, 0)).all(axis=-1)).any()  # tiles past the cap not drawn
    assert page([("many", long[:MAX_TILES])], 32).shape[0] + LINE_H == pixels.shape[0]


def test_no_blocks_writes_nothing(tmp_path: Path, images: list[Path]) -> None:
    write_sheets(tmp_path, "s", [("h", [Tile(images[0], "c")])])
    assert write_sheets(tmp_path, "s", []) == []
    assert not list(tmp_path.glob("s_*.jpg"))
