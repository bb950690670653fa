"""Contact sheets: paginated JPEG pages of thumbnails for checking a de-duplication by eye.

Each thing to check (a duplicate pair, a label-conflict group, a group of similar images)
is a block: a heading above its tiles, and under each tile's thumbnail the image's whole
relative path and the rest of its caption. Blocks are packed left to right across a page
PAGE_WIDTH pixels wide and wrap onto the next line when the width is used up; a block with
more tiles than a line holds wraps its own tiles onto several lines. Text is wrapped, never
cut, and the tiles of one line are drawn at one height so the grid stays aligned.
"""

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from medimg.data.images import ImageError, load_rgb
from medimg.io import atomic_path
from medimg.parallel import process_map

PAGE_WIDTH = 1700  # fits a full-HD screen: three pairs of 256-pixel tiles side by side
MAX_TILES = 24  # per block; more are left out with a "+K more" note under the heading
MARGIN = 12  # around the page
GAP = 16  # between blocks, across and down
PAD = 6  # inside a block: around and between its tiles
FONT_SIZE = 14
LINE_H = 18
SHEET_BG = (210, 210, 210)
BLOCK_BG = (250, 250, 250)
TILE_BG = (128, 128, 128)  # neutral grey: a black MRI border stays visible
TEXT = (0, 0, 0)
ERROR_TEXT = (255, 255, 255)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class Tile:
    """One thumbnail: the image file to show and its caption, the image's relative path
    on the first line and more (kept, removed, a class) on the next."""

    path: Path
    caption: str


Block = tuple[str, list[Tile]]  # a heading and its tiles


@dataclass(frozen=True)
class _Laid:
    """A block ready to draw: its wrapped heading, its shown tiles in rows of at most a
    line's columns, each with its wrapped caption, and its width in pixels."""

    heading: list[str]
    rows: list[list[tuple[Path, list[str]]]]
    width: int


@lru_cache(maxsize=1)
def _font() -> Font:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (ImportError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def wrap_text(text: str, width: int, font: Font) -> list[str]:
    """`text` as lines of at most `width` pixels, with nothing left out: each of its lines is
    broken after the last '/' or space that fits, else after the last character that fits
    (a single character wider than `width` keeps a line of its own). Joining the pieces of
    one line of `text` gives that line back."""
    lines: list[str] = []
    for rest in text.split("\n"):
        while len(rest) > 1 and font.getlength(rest) > width:
            low, high = 1, len(rest) - 1  # the longest fitting head, by bisection
            while low < high:
                middle = (low + high + 1) // 2
                if font.getlength(rest[:middle]) <= width:
                    low = middle
                else:
                    high = middle - 1
            cut = max(rest.rfind("/", 0, low), rest.rfind(" ", 0, low)) + 1 or low
            lines.append(rest[:cut])
            rest = rest[cut:]
        lines.append(rest)
    return lines


def _thumbnail(path: Path, tile: int, max_pixels: int | None) -> Image.Image:
    """The image fitted into tile x tile (aspect kept), centred on grey; or an error tile."""
    cell = Image.new("RGB", (tile, tile), TILE_BG)
    try:
        image = Image.fromarray(load_rgb(path, max_pixels, draft=tile))
    except ImageError as err:
        lines = wrap_text(f"unreadable: {err}", tile - 6, _font())
        draw = ImageDraw.Draw(cell)
        for i, line in enumerate(lines[: max(1, (tile - 6) // LINE_H)]):
            draw.text((3, 3 + i * LINE_H), line, fill=ERROR_TEXT, font=_font())
        return cell
    scale = min(tile / image.width, tile / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    cell.paste(image, ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return cell


def _page_width(tile: int) -> int:
    return max(PAGE_WIDTH, 2 * MARGIN + tile + 2 * PAD)


def _lay_out(block: Block, tile: int, font: Font) -> _Laid:
    """Wrap a block's heading and captions and arrange its first MAX_TILES tiles in rows of
    as many columns as the page width holds."""
    heading, tiles = block
    shown = tiles[:MAX_TILES]
    room = _page_width(tile) - 2 * MARGIN
    columns = max(1, min(len(shown), (room - PAD) // (tile + PAD)))
    width = PAD + columns * (tile + PAD)
    if len(tiles) > MAX_TILES:
        heading += f"\n+{len(tiles) - MAX_TILES} more"
    captioned = [(Path(item.path), wrap_text(item.caption, tile, font)) for item in shown]
    rows = [captioned[start : start + columns] for start in range(0, len(captioned), columns)]
    return _Laid(wrap_text(heading, width - 2 * PAD, font), rows, width)


def _shelves(blocks: list[_Laid], room: int) -> list[list[_Laid]]:
    """Blocks in reading order on lines (shelves) of at most `room` pixels, a new line
    whenever the next block does not fit beside the last one."""
    shelves: list[list[_Laid]] = []
    used = 0
    for block in blocks:
        if shelves and used + GAP + block.width <= room:
            shelves[-1].append(block)
            used += GAP + block.width
        else:
            shelves.append([block])
            used = block.width
    return shelves


def render_page(blocks: list[Block], tile: int, max_pixels: int | None = None) -> Image.Image:
    """One page of blocks (see the module's description), as `write_sheets` saves it."""
    font = _font()
    width = _page_width(tile)
    shelves = _shelves([_lay_out(block, tile, font) for block in blocks], width - 2 * MARGIN)
    # One heading height per line and one caption height per row of tiles in it.
    heights = []
    for shelf in shelves:
        heading_h = max(len(block.heading) for block in shelf) * LINE_H + 2
        rows = max(len(block.rows) for block in shelf)
        row_h = [tile + 2 + PAD + LINE_H * max(len(caption) for block in shelf
                                               if r < len(block.rows)
                                               for _, caption in block.rows[r])
                 for r in range(rows)]
        heights.append((heading_h, row_h))
    total = sum(PAD + heading_h + sum(row_h) for heading_h, row_h in heights)
    sheet = Image.new("RGB", (width, 2 * MARGIN + total + GAP * (len(shelves) - 1)), SHEET_BG)
    draw = ImageDraw.Draw(sheet)
    top = MARGIN
    for shelf, (heading_h, row_h) in zip(shelves, heights, strict=True):
        shelf_h = PAD + heading_h + sum(row_h)
        left = MARGIN
        for block in shelf:
            draw.rectangle((left, top, left + block.width - 1, top + shelf_h - 1), BLOCK_BG)
            for i, line in enumerate(block.heading):
                draw.text((left + PAD, top + PAD + i * LINE_H), line, fill=TEXT, font=font)
            y = top + PAD + heading_h
            for row, height in zip(block.rows, row_h, strict=False):
                for c, (path, caption) in enumerate(row):
                    x = left + PAD + c * (tile + PAD)
                    sheet.paste(_thumbnail(path, tile, max_pixels), (x, y))
                    for i, line in enumerate(caption):
                        draw.text((x, y + tile + 2 + i * LINE_H), line, fill=TEXT, font=font)
                y += height
            left += block.width + GAP
        top += shelf_h + GAP
    return sheet


def sheet_paths(folder: Path, stem: str) -> list[Path]:
    """Existing sheets folder/{stem}_NNN.jpg, in page order."""
    pattern = re.compile(rf"{re.escape(stem)}_\d{{3,}}\.jpg")
    return sorted(p for p in Path(folder).glob(f"{stem}_*.jpg") if pattern.fullmatch(p.name))


def _write_page(path: Path, blocks: list[Block], tile: int, max_pixels: int | None) -> Path:
    with atomic_path(path) as tmp:
        # JPEG: a tenth of PNG's encoding time and half its size, and at this quality (no
        # colour subsampling) the thumbnails and the text stay as legible.
        render_page(blocks, tile, max_pixels).save(tmp, format="JPEG", quality=92, subsampling=0)
    return path


def _pages(blocks: list[Block], tiles_per_sheet: int) -> list[list[Block]]:
    """Consecutive blocks, whole, as many a page as keep its shown tiles within
    `tiles_per_sheet` (at least one block a page)."""
    pages: list[list[Block]] = []
    count = 0
    for block in blocks:
        size = min(len(block[1]), MAX_TILES)
        if pages and count + size <= tiles_per_sheet:
            pages[-1].append(block)
            count += size
        else:
            pages.append([block])
            count = size
    return pages


def write_sheets(
    folder: Path,
    stem: str,
    blocks: list[Block],
    tiles_per_sheet: int = 60,
    tile: int = 256,
    max_pixels: int | None = None,
    workers: int = 1,
) -> list[Path]:
    """Write blocks of tiles as paginated JPEG sheets folder/{stem}_001.jpg, _002.jpg, ...

    Each block is a heading and its tiles (at most MAX_TILES, with a '+K more' note under
    the heading for the rest), each tile a `tile`-pixel thumbnail above its wrapped caption;
    blocks fill pages PAGE_WIDTH pixels wide left to right and then downwards (see the
    module's description). A page holds whole blocks, as many as keep it within
    `tiles_per_sheet` tiles. Stale sheets of this stem are removed first; with no blocks
    nothing is written (but the folder is made). Same inputs give the same bytes. Pages are
    drawn in `workers` processes. Returns the written paths in order."""
    if tiles_per_sheet < 1 or tile < 1:
        raise ValueError("tiles_per_sheet and tile must be positive")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)  # an output folder even with nothing to show
    for stale in sheet_paths(folder, stem):
        stale.unlink()
    pages = _pages(blocks, tiles_per_sheet)
    paths = [folder / f"{stem}_{page:03d}.jpg" for page in range(1, len(pages) + 1)]
    return list(process_map(_write_page, paths, pages, [tile] * len(pages),
                            [max_pixels] * len(pages), workers=workers if len(pages) > 1 else 1))
