"""Pictures in and out: PIL images <-> tensors, masks, opening a user's file, outpainting canvases.

The one place where pixels change representation: a picture tensor is [C, H, W] in [0, 1] on the
way out (what `Pipeline.decode` returns) and [1, 3, H, W] in [-1, 1] on the way in (what the
autoencoder takes).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError

FORMATS = ("PNG", "JPEG", "WEBP")  # what noisecraft reads; Pillow's other formats (EPS, PSD, ...) stay closed
MAX_PIXELS = 64 * 2**20  # pixels of a picture read from a file: an 8K photo fits, a decompression bomb does not


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """A picture tensor [C, H, W] in [0, 1] (C = 1 or 3) as an 8-bit PIL image (L or RGB)."""
    array = (pixels.float() * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def to_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """A PIL image as a [1, 3, H, W] tensor in [-1, 1], resized (Lanczos) to width x height if needed."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    array = torch.from_numpy(np.asarray(image, dtype="float32").copy())
    return (array / 127.5 - 1.0).permute(2, 0, 1)[None]


def mask_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """A mask as [1, 1, H, W] of 0 (keep) and 1 (repaint): white repaints, as in A1111 and diffusers."""
    image = image.convert("L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    array = torch.from_numpy(np.asarray(image, dtype="float32").copy()) / 255.0
    return (array >= 0.5).float()[None, None]


def load_picture(file: str | Path | BinaryIO, what: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A PNG, JPEG or WebP picture from a path or a file object, decoded only after its size is checked
    (a small file can claim a huge picture); anything else is a `UserError` naming `what`."""
    try:
        with warnings.catch_warnings():  # the size is checked below, against noisecraft's own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file, formats=FORMATS)
    except FileNotFoundError:
        raise UserError(f"{what}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise UserError(f"{what} is not a picture noisecraft can read (use PNG, JPEG or WebP)") from None
    with image:
        if image.width * image.height > max_pixels:
            raise UserError(f"{what} is {image.width}x{image.height} pixels; noisecraft reads pictures of at most "
                            f"{max_pixels:,} pixels")
        try:
            image.load()
        except Exception:  # Pillow raises many kinds for a damaged file
            raise UserError(f"{what} is a damaged picture noisecraft cannot read; save it again as PNG, JPEG or WebP") from None
        picture = image.copy()
    picture.info, picture.format = dict(image.info), image.format
    return picture


def open_image(path: str | Path, flag: str) -> Image.Image:
    """A picture the user named on the command line (`flag` names the option); a missing or unreadable file is one sentence."""
    return load_picture(Path(path).expanduser(), f"{flag} {path}")


def outpaint_canvas(image: Image.Image, sides: tuple[int, int, int, int], multiple: int = 8) -> tuple[Image.Image, Image.Image]:
    """Outpainting as inpainting: the picture on a larger canvas, and a mask that is white on the new area.

    `sides` = (left, top, right, bottom) pixels to add; the right and bottom grow further to reach a
    multiple of `multiple`. The new area starts as the picture's edge pixels stretched outwards, so
    the autoencoder sees plausible colours rather than a black frame.
    """
    left, top, right, bottom = sides
    width, height = image.size
    right += -(width + left + right) % multiple
    bottom += -(height + top + bottom) % multiple
    array = np.asarray(image.convert("RGB"))
    canvas = np.pad(array, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[top: top + height, left: left + width] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)
