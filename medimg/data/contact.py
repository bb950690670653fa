"""Contact sheets: paginated PNG grids of thumbnails for checking a de-duplication by eye."""

import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from medimg.data.images import ImageError, load_rgb
from medimg.io import atomic_path
from medimg.parallel import process_map

MAX_TILES = 8  # per row; longer rows are cut with a "+K more" note
HEADING_W = 200  # heading column on the left of each row
PAD = 6
FONT_SIZE = 12
LINE_H = 15
CAPTION_LINES = 2
SHEET_BG = (235, 235, 235)
TILE_BG = (128, 128, 128)  # neutral grey: a black MRI border stays visible
TEXT = (0, 0, 0)
ERROR_TEXT = (255, 255, 255)
ELLIPSIS = "…"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@dataclass(frozen=True)
class Tile:
    """One thumbnail: the image file to show and a caption of one or two lines."""

    path: Path
    caption: str


@lru_cache(maxsize=1)
def _font() -> Font:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (ImportError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def fit_text(text: str, width: int, font: Font, from_left: bool = True) -> str:
    """Shorten `text` with an ellipsis until it fits `width` pixels; from the left by default,
    so the end of a path (the file name) stays readable."""
    if font.getlength(text) <= width:
        return text

    def shortened(keep: int) -> str:
        return ELLIPSIS + text[len(text) - keep:] if from_left else text[:keep] + ELLIPSIS

    low, high = 0, len(text)  # the longest fitting tail (or head) by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if font.getlength(shortened(middle)) <= width:
            low = middle
        else:
            high = middle - 1
    return shortened(low)


def _thumbnail(path: Path, tile: int, max_pixels: int | None) -> Image.Image:
    """The image fitted into tile x tile (aspect kept), centred on grey; or an error tile."""
    cell = Image.new("RGB", (tile, tile), TILE_BG)
    try:
        image = Image.fromarray(load_rgb(path, max_pixels, draft=tile))
    except ImageError as err:
        chars = max(8, tile // 7)
        lines = ["unreadable:", *textwrap.wrap(str(err), chars)][: max(1, tile // LINE_H)]
        draw = ImageDraw.Draw(cell)
        for i, line in enumerate(lines):
            text = fit_text(line, tile - 6, _font(), from_left=False)
            draw.text((3, 3 + i * LINE_H), text, fill=ERROR_TEXT, font=_font())
        return cell
    scale = min(tile / image.width, tile / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    cell.paste(image, ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return cell


def _render(rows: list[tuple[str, list[Tile]]], tile: int, max_pixels: int | None) -> Image.Image:
    font = _font()
    cell_w = tile + PAD
    row_h = tile + CAPTION_LINES * LINE_H + 2 * PAD
    cols = max(1, min(MAX_TILES, max(len(tiles) for _, tiles in rows)))
    sheet = Image.new("RGB", (HEADING_W + cols * cell_w + PAD, len(rows) * row_h + PAD), SHEET_BG)
    draw = ImageDraw.Draw(sheet)
    for r, (heading, tiles) in enumerate(rows):
        top = PAD + r * row_h
        lines = heading.splitlines() or [""]
        if len(tiles) > MAX_TILES:
            lines.append(f"+{len(tiles) - MAX_TILES} more")
        for i, line in enumerate(lines[: row_h // LINE_H]):
            text = fit_text(line, HEADING_W - 2 * PAD, font, from_left=False)
            draw.text((PAD, top + i * LINE_H), text, fill=TEXT, font=font)
        for c, item in enumerate(tiles[:MAX_TILES]):
            left = HEADING_W + c * cell_w
            sheet.paste(_thumbnail(Path(item.path), tile, max_pixels), (left, top))
            for i, line in enumerate(item.caption.splitlines()[:CAPTION_LINES]):
                y = top + tile + 2 + i * LINE_H
                draw.text((left, y), fit_text(line, tile, font), fill=TEXT, font=font)
    return sheet


def sheet_paths(folder: Path, stem: str) -> list[Path]:
    """Existing sheets folder/{stem}_NNN.png, in page order."""
    pattern = re.compile(rf"{re.escape(stem)}_\d{{3,}}\.png")
    return sorted(p for p in Path(folder).glob(f"{stem}_*.png") if pattern.fullmatch(p.name))


def _write_page(path: Path, rows: list[tuple[str, list[Tile]]], tile: int,
                max_pixels: int | None) -> Path:
    with atomic_path(path) as tmp:
        _render(rows, tile, max_pixels).save(tmp, format="PNG", compress_level=1)
    return path


def write_sheets(
    folder: Path,
    stem: str,
    rows: list[tuple[str, list[Tile]]],
    rows_per_sheet: int = 25,
    tile: int = 128,
    max_pixels: int | None = None,
    workers: int = 1,
) -> list[Path]:
    """Write rows of tiles as paginated PNG sheets folder/{stem}_001.png, _002.png, ...

    Each row is a heading (drawn in a column on the left) and its tiles left to right; rows
    longer than 8 tiles are cut at 8 with a '+K more' note under the heading. Stale sheets
    of this stem are removed first; with no rows nothing is written (but the folder is
    made). Same inputs give the same bytes. Pages are drawn in `workers` processes.
    Returns the written paths in order."""
    if rows_per_sheet < 1 or tile < 1:
        raise ValueError("rows_per_sheet and tile must be positive")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)  # an output folder even with nothing to show
    for stale in sheet_paths(folder, stem):
        stale.unlink()
    pages = [rows[start : start + rows_per_sheet] for start in range(0, len(rows), rows_per_sheet)]
    paths = [folder / f"{stem}_{page:03d}.png" for page in range(1, len(pages) + 1)]
    return list(process_map(_write_page, paths, pages, [tile] * len(pages),
                            [max_pixels] * len(pages), workers=workers if len(pages) > 1 else 1))
