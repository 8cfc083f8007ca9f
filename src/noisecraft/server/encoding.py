"""Pictures in JSON: base64 PNG/JPEG/WebP from requests (checked before anything runs), PNGs out."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image

from ..errors import UserError
from ..images import load_picture
from ..pngmeta import png_bytes
from .errors import FieldError

MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096


def decode_image(text: Any, loc: tuple) -> Image.Image:
    """A base64 picture from a request (raw or a data: URL), checked before anything runs."""
    name = ".".join(map(str, loc))
    if not isinstance(text, str) or not text.strip():
        raise FieldError(loc, f"{name} must be a base64-encoded PNG or JPEG")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = "".join(text.split())
    if len(text) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise FieldError(loc, f"{name} is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(loc, f"{name} is not valid base64") from None
    try:
        return load_picture(io.BytesIO(raw), name, MAX_UPLOAD_PIXELS)
    except UserError as error:
        raise FieldError(loc, str(error)) from None


def png_base64(image: Image.Image) -> str:
    """A PNG with the image's A1111 `parameters` chunk, encoded exactly as `pngmeta.save_png` writes it."""
    return base64.b64encode(png_bytes(image)).decode("ascii")
