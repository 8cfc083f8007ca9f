"""Generation parameters in and out of PNG files, in AUTOMATIC1111's `parameters` format.

A1111 writes one tEXt chunk named ``parameters``::

    a palm tree
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 5.0, Seed: 1, Size: 64x64, Model hash: 0123456789, Model: emoji

Other tools (A1111's "PNG Info", ComfyUI, image sites) read it back, so we write the same.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from .files import replacing

# A1111 quotes a value that holds a comma, colon or quote, as JSON does.
_NEEDS_QUOTES = re.compile(r'[,:"\n]')


def _quote(value) -> str:
    text = str(value)
    if not _NEEDS_QUOTES.search(text):
        return text
    import json

    return json.dumps(text, ensure_ascii=False)


def format_parameters(prompt: str, negative_prompt: str = "", **settings) -> str:
    """Build the A1111 text: prompt line, optional negative line, then `Key: value` pairs.

    Keyword names are the A1111 labels with spaces written as underscores
    (``CFG_scale=5`` becomes ``CFG scale: 5``); ``None`` values are left out.
    """
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = [f"{key.replace('_', ' ')}: {_quote(value)}" for key, value in settings.items() if value is not None]
    lines.append(", ".join(pairs))
    return "\n".join(lines)


_PAIR = re.compile(r'\s*([\w ][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_parameters(text: str) -> dict:
    """Read A1111 parameters text back into a dict: `prompt`, `negative_prompt` and each `Key`."""
    import json

    *head, last = text.strip("\n").split("\n")
    if not _PAIR.match(last) or "Steps:" not in last:
        head, last = head + [last], ""
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in head:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
    for key, value in _PAIR.findall(last):
        value = value.strip()
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:  # a quoted value with a broken escape (written by hand, or by another tool): kept as it is
                pass
        result[key.strip()] = value
    return result


def amend_parameters(text: str, **fields) -> str:
    """A1111 parameters text with `fields` set (labels as in `format_parameters`; Version stays last)."""
    values = parse_parameters(text)
    prompt, negative = values.pop("prompt"), values.pop("negative_prompt")
    version = values.pop("Version", None)
    values |= {key.replace("_", " "): value for key, value in fields.items()}
    values["Version"] = version
    return format_parameters(prompt, negative, **{key.replace(" ", "_"): value for key, value in values.items()})


def png_bytes(image: Image.Image, parameters: str | None = None) -> bytes:
    """`image` as PNG bytes with its `parameters` chunk (default ``image.info["parameters"]``, which
    `Pipeline` sets on every image): exactly what `save_png` writes."""
    buffer = io.BytesIO()
    _write_png(image, buffer, parameters)
    return buffer.getvalue()


def save_png(image: Image.Image, path: str | os.PathLike, parameters: str | None = None) -> Path:
    """Write `image` as PNG with its `parameters` chunk, atomically (temp file, then rename)."""
    path = Path(path)
    with replacing(path) as handle:
        _write_png(image, handle, parameters)
    return path


def _write_png(image: Image.Image, handle, parameters: str | None) -> None:
    parameters = parameters if parameters is not None else image.info.get("parameters")
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    extra = {"dpi": image.info["dpi"]} if "dpi" in image.info else {}  # a print layout's 300 dpi, kept
    image.save(handle, format="PNG", pnginfo=info, **extra)


def read_parameters(path: str | os.PathLike) -> str | None:
    """The `parameters` text stored in a PNG, or None."""
    with Image.open(path) as image:
        return image.info.get("parameters")


USER_COMMENT, EXIF_IFD = 0x9286, 0x8769
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def image_bytes(image: Image.Image, format: str = "png", quality: int | None = None) -> bytes:
    """The picture as PNG (with its `parameters` chunk), JPEG or WebP (`quality` 0-100; the parameters
    in EXIF's UserComment, UTF-16 as A1111 writes them)."""
    if format == "png":
        return png_bytes(image)
    text = image.info.get("parameters")
    exif = Image.Exif()
    if text:
        exif.get_ifd(EXIF_IFD)[USER_COMMENT] = b"UNICODE\0" + text.encode("utf-16-be")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, FORMATS[format], quality=100 if quality is None else quality, exif=exif)
    return buffer.getvalue()
