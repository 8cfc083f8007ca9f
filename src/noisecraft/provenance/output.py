"""A finished picture file: watermark the pixels, encode with the generation parameters, sign last.

    data = finish(image, "png", identity=local_identity())   # bytes: watermark, parameters, C2PA
    write("out.png", data)                                    # atomic

The order matters: the watermark changes pixels, so it comes before encoding; the manifest
hashes the encoded bytes, so signing is the very last step (anything after it breaks the
signature, which is what verify is for).
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from ..files import write_bytes
from ..pngmeta import image_bytes, parse_parameters
from .signing import mime_type, sign
from .watermark import embed, new_mark_id


def finish(image: Image.Image, format: str = "png", quality: int | None = None, *, identity=None,
           watermark: bool | int = True, title: str | None = None, action: str = "c2pa.created",
           ingredients=()) -> bytes:
    """The picture as a file's bytes: watermarked (`watermark` True: a new random id, an int: that
    id, False or None: none; a picture too small to carry one is left unmarked, see `watermark.fits`),
    encoded as png/jpeg/webp with `image.info["parameters"]` (pngmeta), then signed by `identity`
    (None: not signed) as `action` with `ingredients` (see `signing.sign`). The model's name and
    hash come from the parameters' `Model` and `Model hash`."""
    mime_type(format)
    mark_id = None
    if watermark is not False and watermark is not None:
        mark_id = new_mark_id() if watermark is True else int(watermark)
        marked = embed(image, mark_id)
        mark_id = None if marked is image else mark_id
        image = marked
    data = image_bytes(image, format.lower().replace("jpg", "jpeg"), quality)
    if identity is None:
        return data
    text = image.info.get("parameters")
    fields = parse_parameters(text) if text else {}
    return sign(data, format, identity, title=title or f"noisecraft picture.{format.lower()}",
                model_name=fields.get("Model"), model_hash=fields.get("Model hash"), action=action,
                ingredients=ingredients, watermark_id=mark_id)


def write(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically: a temp file in the same folder, fsync, then rename over
    `path` (a reader sees the old file or the new one, never half of one); the file gets `mode`."""
    return write_bytes(path, data, mode)
