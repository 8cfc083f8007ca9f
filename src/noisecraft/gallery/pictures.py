"""A made picture into the gallery, with the `Request` that draws it again (its own seed and size)
and its lineage: what the server, the studio and `noisecraft generate --gallery` all call."""

from __future__ import annotations

import dataclasses
import sys

from PIL import Image

from ..pngmeta import parse_parameters, png_bytes
from ..settings import Request
from .files import default_folder
from .items import Item
from .store import Gallery

REQUEST_FIELDS = {f.name for f in dataclasses.fields(Request)}


def add_picture(gallery: Gallery, image: Image.Image, request: Request, *, model: str, source: str,
                operation: str = "generate", parent_id: int | None = None, strength: float | None = None,
                data: bytes | None = None) -> Item:
    """Store `image` (PNG with its parameters, or `data`: its PNG file as made, e.g. signed); its settings are
    `request` as drawn: the seed its parameters name, one picture, its own size."""
    text = image.info.get("parameters") or ""
    seed = parse_parameters(text).get("Seed") if text else None
    seed = int(seed) if str(seed or "").isdigit() else request.seed
    made = dataclasses.replace(request, seed=seed, num_images=1, batch_size=1, width=image.width, height=image.height,
                               strength=strength if strength is not None else request.strength)
    return gallery.add(data if data is not None else png_bytes(image), prompt=request.prompt, negative_prompt=request.negative_prompt, model=model,
                       seed=seed, width=image.width, height=image.height, settings=dataclasses.asdict(made),
                       source=source, parent_id=parent_id, operation=operation, strength=strength)


def request_of(item: Item) -> Request:
    """The `Request` that draws a gallery item's picture again (one picture, its own seed)."""
    return Request(**{k: v for k, v in (item.settings or {}).items() if k in REQUEST_FIELDS})


def open_gallery(folder=None, url: str | None = None) -> Gallery:
    """The gallery in `folder` (default: the user's data folder), saying on stderr what its start-up check repaired."""
    library = Gallery(folder or default_folder(), url)
    if not library.report.clean:
        print(f"noisecraft: gallery check: {library.report}", file=sys.stderr, flush=True)
    return library
