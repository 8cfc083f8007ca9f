"""A contact sheet: every picture of a campaign as a captioned thumbnail on one page, for review."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL = 300  # thumbnail box, pixels
CAPTION = 34
MARGIN = 24


def _font(size: int, path: Path | None = None):
    try:
        return ImageFont.truetype(str(path), size) if path else ImageFont.load_default(size)
    except OSError:
        return ImageFont.load_default(size)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    return text


def contact_sheet(pictures: list[tuple[str, Image.Image]], title: str, columns: int = 4,
                  font: Path | None = None) -> Image.Image:
    """`pictures` (caption, picture) as a grid of thumbnails with their captions under a title."""
    columns = max(1, min(columns, len(pictures) or 1))
    rows = max(1, math.ceil(len(pictures) / columns))
    width = MARGIN * 2 + columns * CELL + (columns - 1) * MARGIN
    height = MARGIN * 3 + 40 + rows * (CELL + CAPTION) + (rows - 1) * MARGIN
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((MARGIN, MARGIN), _fit(draw, title, _font(30, font), width - 2 * MARGIN), fill=(20, 20, 20), font=_font(30, font))
    small = _font(16, font)
    for k, (caption, picture) in enumerate(pictures):
        x = MARGIN + (k % columns) * (CELL + MARGIN)
        y = MARGIN * 2 + 40 + (k // columns) * (CELL + CAPTION + MARGIN)
        thumb = picture.convert("RGB")
        thumb.thumbnail((CELL, CELL), Image.Resampling.LANCZOS)
        draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=(240, 240, 240))
        sheet.paste(thumb, (x + (CELL - thumb.width) // 2, y + (CELL - thumb.height) // 2))
        draw.text((x, y + CELL + 6), _fit(draw, caption, small, CELL), fill=(60, 60, 60), font=small)
    return sheet
