"""Rendering a template: pictures, panels, the logo and fitted, readable text on one canvas.

Boxes are drawn in the template's order. For each text slot the text is fitted (`fitting.py`),
placed by its alignment, and rated against the pixels now under it (`contrast.py`):

* at 4.5:1 or better it is drawn as it is;
* over a picture (or with ``backing = "always"``) it gets a rounded backing panel of a style colour
  (or black/white) at the least opacity that brings it to 4.5:1;
* on flat design colour (the canvas, a band, a button's fill) it switches to the first style colour,
  else to black or white, that reaches 4.5:1 there.

An empty image slot is not an error: it shows a quiet gradient of the style's secondary and
background colours, and `Layout.empty_slots` names it, so a caller may fill it later or warn.
A text slot without text is an error unless it has a default or ``required = false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UserError, shown
from .boxes import ImageSlot, LogoBox, Panel, TextSlot
from .contrast import TARGET, backing, best_text_colour, worst_ratio
from .fitting import FittedText, fit_text
from .paint import PixelBox, clip, corner_radius, overlaps, paint_panel, paste_logo, paste_picture, placeholder
from .style import RGB, Style
from .template import Template, load_template


@dataclass(frozen=True)
class PlacedText:
    """Where a text went and how it reads: boxes in pixels (left, top, right, bottom)."""

    name: str
    text: str
    box: PixelBox  # the template's box
    extent: PixelBox  # the lines themselves, inside `box`
    size: int  # em size in pixels
    lines: tuple[str, ...]
    colour: RGB  # the colour drawn (the role's, unless contrast called for another)
    panel: PixelBox | None  # the backing panel, if one was added
    contrast: float  # the worst-case WCAG ratio of `colour` against the pixels under `extent`


@dataclass(frozen=True)
class Layout:
    image: Image.Image  # RGB, with info["dpi"]
    texts: dict[str, PlacedText]
    empty_slots: tuple[str, ...]  # image slots no picture was given for
    template: Template
    steps: int = 0  # the number of grid cells drawn


def render(template: Template | str, style: Style | None = None, texts: dict[str, str] | None = None,
           images: dict[str, Image.Image] | None = None) -> Image.Image:
    """The finished picture (RGB); see `compose` for the details of what was placed where."""
    return compose(template, style, texts, images).image


def compose(template: Template | str | Path, style: Style | None = None, texts: dict[str, str] | None = None,
            images: dict[str, Image.Image] | None = None) -> Layout:
    """Render `template` (a `Template`, a built-in name or a file) in `style` with `texts` and `images`
    by slot name. A missing or unknown slot is a one-sentence `UserError` naming it."""
    template = template if isinstance(template, Template) else load_template(template)
    style = style or Style.default()
    texts, images = dict(texts or {}), dict(images or {})
    count = step_count(template, texts, images)
    boxes = template.layout(count)
    _check(template, boxes, texts, images)
    canvas = Image.new("RGB", template.size, style.colour(template.background))
    pictures: list[PixelBox] = []
    placed: dict[str, PlacedText] = {}
    empty: list[str] = []
    sizes = _text_sizes(template, boxes, texts, style)
    for box in boxes:
        pixels = box.rect.pixels(template.size)
        if isinstance(box, ImageSlot):
            picture = images.get(box.name)
            if picture is None:
                empty.append(box.name)
                picture = placeholder((pixels[2] - pixels[0], pixels[3] - pixels[1]), style.colour("secondary"),
                                      _mix(style.colour("secondary"), style.colour("background")))
            paste_picture(canvas, picture, pixels, box.fit, corner_radius(box.radius, pixels))
            pictures.append(pixels)
        elif isinstance(box, Panel):
            paint_panel(canvas, pixels, style.colour(box.colour), corner_radius(box.radius, pixels), box.opacity)
        elif isinstance(box, LogoBox):
            if style.logo is not None:
                paste_logo(canvas, style.logo, pixels, box.align, backing=style.colour("background"))
        else:
            text = (texts.get(box.name) or "").strip() or box.default
            if text:
                placed[box.name] = _draw_text(canvas, box, text, style, sizes[box.name], pictures)
    canvas.info["dpi"] = (template.dpi, template.dpi)
    return Layout(canvas, placed, tuple(empty), template, count)


def step_count(template: Template, texts: dict, images: dict) -> int:
    """How many grid cells the given names ask for ("caption3" asks for 3); 0 without a grid."""
    grid = template.grid
    if grid is None:
        return 0
    names = grid.slot_names()
    found = [int(key[len(name):]) for key in [*texts, *images] for name in names
             if key.startswith(name) and key[len(name):].isdigit()]
    count = max(found, default=0)
    if not grid.min_count <= count <= grid.max_count:
        slots = ", ".join(f"{name}1" for name in names)
        raise UserError(f"the template {template.name!r} takes {grid.min_count} to {grid.max_count} steps "
                        f"(texts and images named {slots}, ... numbered from 1), but {count} were given",
                        field=names[-1])
    return count


def _check(template: Template, boxes, texts: dict, images: dict) -> None:
    text_names = {b.name for b in boxes if isinstance(b, TextSlot)}
    image_names = {b.name for b in boxes if isinstance(b, ImageSlot)}
    for key, value in texts.items():
        if key not in text_names:
            raise UserError(f"the template {template.name!r} has no text field {key!r}; its text fields are "
                            f"{', '.join(template.text_fields())}", field=key)
        if not isinstance(value, str):
            raise UserError(f"the text for {key!r} must be a string, not {shown(value)}", field=key)
    for key, value in images.items():
        if key not in image_names:
            fields = ", ".join(template.image_fields()) or "none"
            raise UserError(f"the template {template.name!r} has no image slot {key!r}; its image slots are {fields}",
                            field=key)
        if value is not None and not isinstance(value, Image.Image):
            raise UserError(f"the picture for {key!r} must be a PIL image, not {shown(value)}", field=key)
    for box in boxes:
        if isinstance(box, TextSlot) and box.required and box.default is None and not texts.get(box.name, "").strip():
            raise UserError(f"the template {template.name!r} needs a text for {box.name!r}", field=box.name)


def _mix(a: RGB, b: RGB, t: float = 0.5) -> RGB:
    return tuple(round((1 - t) * x + t * y) for x, y in zip(a, b))


def _pixel_sizes(slot: TextSlot, template: Template) -> tuple[int, int]:
    scale = {"canvas": min(template.size), "pt": template.dpi / 72, "px": 1.0}[slot.unit]
    low = max(6, round(slot.font_size[0] * scale))
    return low, max(low, round(slot.font_size[1] * scale))


def _text_sizes(template: Template, boxes, texts: dict, style: Style) -> dict[str, tuple[int, int]]:
    """Each text slot's range of sizes in pixels; a grid's cells share one size per slot (the smallest
    any of them needs), so the captions of a guide match."""
    sizes = {b.name: _pixel_sizes(b, template) for b in boxes if isinstance(b, TextSlot)}
    grid = template.grid
    for base in [b.name for b in grid.cell if isinstance(b, TextSlot)] if grid else []:
        cells = [b for b in boxes if isinstance(b, TextSlot) and b.name[len(base):].isdigit()
                 and b.name.startswith(base) and (texts.get(b.name) or b.default)]
        fits = [_place(texts.get(b.name) or b.default, b, _text_area(b, template.size), style, sizes[b.name])[0].size
                for b in cells]
        for b in cells:
            sizes[b.name] = (sizes[b.name][0], min(fits))
    return sizes


def _text_area(slot: TextSlot, canvas: tuple[int, int]) -> PixelBox:
    """Where the lines may go: the box, inset from the edges of its fill if it has one."""
    box = slot.rect.pixels(canvas)
    if not slot.fill:
        return box
    inset_y = round(min(box[2] - box[0], box[3] - box[1]) * 0.18)
    inset_x = max(inset_y, round(corner_radius(slot.radius, box) * 0.7))
    return box[0] + inset_x, box[1] + inset_y, box[2] - inset_x, box[3] - inset_y


def _draw_text(canvas: Image.Image, slot: TextSlot, text: str, style: Style, sizes: tuple[int, int],
               pictures: list[PixelBox]) -> PlacedText:
    box = slot.rect.pixels(canvas.size)
    if slot.fill:
        paint_panel(canvas, box, style.colour(slot.fill), corner_radius(slot.radius, box))
    area = _text_area(slot, canvas.size)
    fitted, origins, extent = _place(text, slot, area, style, sizes)
    under = np.asarray(canvas.crop(clip(extent, canvas.size)))
    colour = style.colour(slot.colour)
    ratio = worst_ratio(colour, under)
    panel = None
    over_picture = slot.fill is None and any(overlaps(extent, p) for p in pictures)
    if ratio < TARGET and not over_picture and slot.backing != "always":
        roles = [style.colour(r) for r in ("text", "background", "primary", "secondary", "accent")]
        colour, ratio = best_text_colour(under, [c for c in roles if c != colour])
    if slot.backing == "always" or ratio < TARGET:
        pad_x, pad_y = _padding(fitted.size)
        try:  # the panel inside the box too: fit again within the padding
            fitted, origins, extent = _place(text, slot, (area[0] + pad_x, area[1] + pad_y, area[2] - pad_x,
                                                          area[3] - pad_y), style, sizes)
            pad_x, pad_y = _padding(fitted.size)
        except UserError:  # no room for the padding: the panel reaches a little beyond the box
            pass
        under = np.asarray(canvas.crop(clip(extent, canvas.size)))
        panel = clip((extent[0] - pad_x, extent[1] - pad_y, extent[2] + pad_x, extent[3] + pad_y), canvas.size)
        palette = [style.colour(r) for r in ("primary", "text", "background", "secondary", "accent")]
        colour, panel_colour, opacity, ratio = backing(style.colour(slot.colour), under, palette)
        paint_panel(canvas, panel, panel_colour, round(fitted.size * 0.3), opacity)
    draw = ImageDraw.Draw(canvas)
    for (x, baseline), line in zip(origins, fitted.lines):
        draw.text((x, baseline), line, font=fitted.font, fill=colour, anchor="ls")
    return PlacedText(slot.name, text, box, extent, fitted.size, fitted.lines, colour, panel,
                      round(float(ratio), 2))


def _padding(size: int) -> tuple[int, int]:
    """Room between text and the edge of its backing panel."""
    return round(size * 0.45), round(size * 0.3)


def _place(text: str, slot: TextSlot, area: PixelBox, style: Style, sizes: tuple[int, int]):
    """The text fitted to `area` at `sizes` (pixels): (fitted, line origins, extent of the lines)."""
    fitted = fit_text(text, lambda size: style.font(slot.font, size), (area[2] - area[0], area[3] - area[1]),
                      sizes, slot.max_lines, slot.name)
    origins = _origins(fitted, area, slot.align, slot.valign)
    extent = (min(x for x, _ in origins), origins[0][1] - fitted.ascent,
              max(x + w for (x, _), w in zip(origins, fitted.widths)), origins[-1][1] + fitted.descent)
    return fitted, origins, extent


def _origins(fitted: FittedText, area: PixelBox, align: str, valign: str) -> list[tuple[int, int]]:
    """The (x, baseline) of each line in `area`."""
    spare_h = (area[3] - area[1]) - fitted.height
    top = area[1] + {"top": 0, "middle": spare_h // 2, "bottom": spare_h}[valign]
    origins = []
    for i, width in enumerate(fitted.widths):
        spare_w = (area[2] - area[0]) - width
        x = area[0] + {"left": 0, "center": spare_w // 2, "right": spare_w}[align]
        origins.append((x, top + fitted.ascent + i * fitted.line_height))
    return origins

