"""The pieces a template is made of, in relative coordinates (0..1 of the canvas, or of a grid cell).

* `ImageSlot`: a picture, fitted by "cover" (fill, crop the overflow) or "contain" (whole picture).
* `TextSlot`: text that is fitted to its box (see `fitting.py`) in a font role and a colour role.
* `LogoBox`: where the style's logo goes, "contain"-fitted with its alpha.
* `Panel`: a flat shape in a colour role (bands, cards, rules); decoration, no content.
* `Grid`: repeated cells (the steps of a guide): its `cell` boxes are in cell coordinates, and
  their names get the step number appended ("image1", "caption1", ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

ASPECT_SLACK = 1.35  # how far a grid cell's shape may stray from its cell_aspect to fill the space


@dataclass(frozen=True)
class Rect:
    """x, y, width and height as fractions of the canvas (or of a grid cell)."""

    x: float
    y: float
    w: float
    h: float

    def pixels(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels of a canvas of `size` (width, height)."""
        width, height = size
        return (round(self.x * width), round(self.y * height),
                round((self.x + self.w) * width), round((self.y + self.h) * height))

    def inside(self, cell: Rect) -> Rect:
        """This rect, given relative to `cell`, in the coordinates `cell` is given in."""
        return Rect(cell.x + self.x * cell.w, cell.y + self.y * cell.h, self.w * cell.w, self.h * cell.h)


@dataclass(frozen=True)
class ImageSlot:
    name: str
    rect: Rect
    fit: str = "cover"  # or "contain"
    radius: float = 0.0  # corner radius as a fraction of the box's shorter side (0.5: a pill)


@dataclass(frozen=True)
class TextSlot:
    name: str
    rect: Rect
    font: str = "body"  # a font role of the style
    colour: str = "text"  # a colour role of the style
    font_size: tuple[float, float] = (0.02, 0.05)  # smallest and largest size, in `unit`
    unit: str = "canvas"  # "canvas": fractions of the canvas's shorter side; "pt" (at the dpi) or "px"
    align: str = "left"  # "left", "center" or "right"
    valign: str = "top"  # "top", "middle" or "bottom"
    max_lines: int = 1
    default: str | None = None  # used when the caller gives no text; "{n}" is the step number in a grid
    required: bool = True  # without a default, a missing text is an error (False: the box stays empty)
    fill: str | None = None  # a colour role filling the box behind the text (a button, a badge)
    radius: float = 0.0  # of the fill, as for an image
    backing: str = "auto"  # "auto": a panel only where contrast needs one; "always": a panel in any case


@dataclass(frozen=True)
class LogoBox:
    rect: Rect
    align: str = "center"  # "left", "center" or "right" within the box
    name: str = "logo"


@dataclass(frozen=True)
class Panel:
    rect: Rect
    colour: str = "primary"
    radius: float = 0.0
    opacity: float = 1.0
    name: str = "panel"


Box = ImageSlot | TextSlot | LogoBox | Panel


@dataclass(frozen=True)
class Grid:
    """Numbered cells laid out in rows and columns inside `rect`, between `min_count` and `max_count` of them."""

    rect: Rect
    cell: tuple[Box, ...]
    min_count: int = 2
    max_count: int = 6
    gap: float = 0.03  # between cells, as a fraction of the canvas's shorter side
    cell_aspect: float = 0.8  # width / height of a cell in pixels
    name: str = "grid"

    def slot_names(self) -> list[str]:
        """The names in one cell that take a number (images and texts), in drawing order."""
        return [box.name for box in self.cell if isinstance(box, (ImageSlot, TextSlot))]

    def expand(self, count: int, canvas: tuple[int, int]) -> list[Box]:
        """The boxes of `count` cells on a canvas of `canvas` pixels, named with their step number."""
        boxes: list[Box] = []
        for n, cell in enumerate(cell_rects(self, count, canvas), start=1):
            for box in self.cell:
                moved = replace(box, rect=box.rect.inside(cell))
                if isinstance(box, (ImageSlot, TextSlot)):
                    moved = replace(moved, name=f"{box.name}{n}")
                if isinstance(box, TextSlot) and box.default is not None:
                    moved = replace(moved, default=box.default.replace("{n}", str(n)))
                boxes.append(moved)
        return boxes


def cell_rects(grid: Grid, count: int, canvas: tuple[int, int]) -> list[Rect]:
    """`count` cells, as large as they can be: each fills its share of the grid's rect, its shape kept
    within a factor ASPECT_SLACK of `cell_aspect`; the column count that gives the largest cells wins.
    The block of cells is centred in the grid's rect, and a short last row is centred too."""
    width, height = canvas
    gap = grid.gap * min(canvas)
    area_w, area_h = grid.rect.w * width, grid.rect.h * height

    def cell_size(cols: int) -> tuple[float, float]:
        rows = math.ceil(count / cols)
        slot_w, slot_h = (area_w - gap * (cols - 1)) / cols, (area_h - gap * (rows - 1)) / rows
        narrowest, widest = grid.cell_aspect / ASPECT_SLACK, grid.cell_aspect * ASPECT_SLACK
        return min(slot_w, slot_h * widest), min(slot_h, slot_w / narrowest)

    cols = max(range(1, count + 1), key=lambda c: cell_size(c)[0] * cell_size(c)[1])
    rows = math.ceil(count / cols)
    cell_w, cell_h = cell_size(cols)
    top = grid.rect.y * height + (area_h - rows * cell_h - (rows - 1) * gap) / 2
    rects = []
    for index in range(count):
        row, col = divmod(index, cols)
        in_row = min(cols, count - row * cols)
        left = grid.rect.x * width + (area_w - in_row * cell_w - (in_row - 1) * gap) / 2
        x, y = left + col * (cell_w + gap), top + row * (cell_h + gap)
        rects.append(Rect(x / width, y / height, cell_w / width, cell_h / height))
    return rects
