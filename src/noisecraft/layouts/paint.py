"""Putting pixels on the canvas: pictures fitted to slots, rounded panels, the logo.

Every operation works on the part of the canvas it touches, so a 24 x 36 in sign at 300 dpi (78
million pixels) costs no more than its boxes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .contrast import contrast_ratio

PixelBox = tuple[int, int, int, int]  # left, top, right, bottom


def rounded_mask(size: tuple[int, int], radius: int) -> Image.Image:
    """An L mask of `size`: 255 inside a rectangle with corners of `radius` pixels, edges anti-aliased."""
    width, height = size
    if radius <= 0:
        return Image.new("L", size, 255)
    scale = 4 if width * height <= 1_000_000 else 2 if width * height <= 6_000_000 else 1
    mask = Image.new("L", (width * scale, height * scale), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, width * scale - 1, height * scale - 1), radius * scale, fill=255)
    return mask if scale == 1 else mask.resize(size, Image.LANCZOS)


def corner_radius(fraction: float, box: PixelBox) -> int:
    """A radius given as a fraction of the box's shorter side (0.5: a pill or a circle), in pixels."""
    return round(fraction * min(box[2] - box[0], box[3] - box[1]))


def fitted(picture: Image.Image, size: tuple[int, int], fit: str) -> Image.Image:
    """`picture` at `size`: "cover" fills it and crops the overflow evenly; "contain" shows all of it
    (the result is then smaller on one side)."""
    width, height = size
    pw, ph = picture.size
    if fit == "contain":
        scale = min(width / pw, height / ph)
        return picture.resize((max(1, round(pw * scale)), max(1, round(ph * scale))), Image.LANCZOS)
    scale = max(width / pw, height / ph)
    crop_w, crop_h = width / scale, height / scale
    left, top = max(0.0, (pw - crop_w) / 2), max(0.0, (ph - crop_h) / 2)
    box = (left, top, min(float(pw), left + crop_w), min(float(ph), top + crop_h))
    return picture.resize(size, Image.LANCZOS, box=box)


def paste_picture(canvas: Image.Image, picture: Image.Image, box: PixelBox, fit: str, radius: int) -> None:
    """`picture` fitted into `box` of the canvas, centred, with rounded corners of `radius` pixels."""
    size = (box[2] - box[0], box[3] - box[1])
    picture = fitted(picture.convert("RGB"), size, fit)
    left = box[0] + (size[0] - picture.width) // 2
    top = box[1] + (size[1] - picture.height) // 2
    canvas.paste(picture, (left, top), rounded_mask(picture.size, radius) if radius else None)


def placeholder(size: tuple[int, int], start, end) -> Image.Image:
    """What an empty image slot shows: a quiet diagonal gradient between two palette colours."""
    width, height = size
    small = (min(width, 256), min(height, 256))
    u = np.linspace(0, 1, small[0])[None, :, None]
    v = np.linspace(0, 1, small[1])[:, None, None]
    t = (u + v) / 2
    pixels = (1 - t) * np.asarray(start, float) + t * np.asarray(end, float)
    return Image.fromarray(np.round(pixels).astype(np.uint8), "RGB").resize(size, Image.BILINEAR)


def paint_panel(canvas: Image.Image, box: PixelBox, colour, radius: int, opacity: float = 1.0) -> None:
    """A flat rectangle of `colour` over `box`, rounded by `radius` pixels, at `opacity`."""
    box = clip(box, canvas.size)
    size = (box[2] - box[0], box[3] - box[1])
    if size[0] <= 0 or size[1] <= 0:
        return
    mask = rounded_mask(size, radius)
    if opacity < 1:
        mask = mask.point(lambda a: round(a * opacity))
    canvas.paste(Image.new("RGB", size, tuple(colour)), box[:2], mask)


LOGO_MIN_CONTRAST = 1.6  # below this the logo's own colours and what is under it blend: it gets a backing


def paste_logo(canvas: Image.Image, logo: Image.Image, box: PixelBox, align: str, backing=None) -> PixelBox:
    """The logo "contain"-fitted into `box`, with its alpha, centred vertically and aligned across; returns where.
    With a `backing` colour, a logo whose colours blend into what is under it (a navy logo on a navy band:
    contrast of the mean colours below LOGO_MIN_CONTRAST) is set on a rounded panel of that colour."""
    size = (box[2] - box[0], box[3] - box[1])
    logo = fitted(logo.convert("RGBA").convert("RGBa"), size, "contain").convert("RGBA")  # premultiplied: no fringes
    spare = size[0] - logo.width
    left = box[0] + {"left": 0, "center": spare // 2, "right": spare}[align]
    top = box[1] + (size[1] - logo.height) // 2
    if backing is not None and _blends(canvas, logo, (left, top)):
        pad = max(4, min(logo.size) // 12)
        panel = clip((left - pad, top - pad, left + logo.width + pad, top + logo.height + pad), canvas.size)
        paint_panel(canvas, panel, backing, corner_radius(0.25, panel))
    canvas.paste(logo, (left, top), logo)
    return left, top, left + logo.width, top + logo.height


def _blends(canvas: Image.Image, logo: Image.Image, at: tuple[int, int]) -> bool:
    pixels = np.asarray(logo, dtype=np.float64)
    opaque = pixels[..., 3] > 128
    if not opaque.any():
        return False
    under = np.asarray(canvas.crop((at[0], at[1], at[0] + logo.width, at[1] + logo.height)).convert("RGB"), np.float64)
    mine, theirs = pixels[..., :3][opaque].mean(axis=0), under[opaque].mean(axis=0)
    return contrast_ratio(tuple(np.round(mine).astype(int)), tuple(np.round(theirs).astype(int))) < LOGO_MIN_CONTRAST


def clip(box: PixelBox, size: tuple[int, int]) -> PixelBox:
    return max(0, box[0]), max(0, box[1]), min(size[0], box[2]), min(size[1], box[3])


def overlaps(a: PixelBox, b: PixelBox) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
