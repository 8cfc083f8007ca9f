"""Writing a finished layout: PNG (with its dpi) or PDF (one page, its size from the pixels and dpi).

Writes are atomic: a temp file beside the target, then `os.replace`, so a reader never sees half a
file. A PDF page is the picture at `dpi`: A4 at 300 dpi (2480 x 3508 pixels) is 595.2 x 841.9 pt.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..files import replacing
from .render import render
from .style import Style
from .template import Template


def save(image: Image.Image, path: str | Path, dpi: int | None = None) -> Path:
    """Write `image` to `path` as PNG or PDF (by its suffix) at `dpi` (default: the image's own, else 300)."""
    path = Path(path).expanduser()
    kind = {".png": "PNG", ".pdf": "PDF"}.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"save the layout as .png or .pdf, not {path.suffix or 'a file without a suffix'}",
                        field="path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"the folder {folder} does not exist", field="path")
    dpi = dpi or round(image.info.get("dpi", (300, 300))[0])
    options = ({"dpi": (dpi, dpi)} if kind == "PNG"
               else {"resolution": float(dpi), "quality": 95, "subsampling": 0, "title": path.stem})
    with replacing(path) as handle:
        image.convert("RGB").save(handle, format=kind, **options)
    return path


def render_pdf(template: Template | str, path: str | Path, style: Style | None = None,
               texts: dict[str, str] | None = None, images: dict[str, Image.Image] | None = None) -> Path:
    """Render `template` and write it to `path` as a one-page PDF at the template's dpi."""
    path = Path(path)
    if path.suffix.lower() != ".pdf":
        raise UserError(f"a PDF path must end in .pdf, not {path.suffix or 'nothing'}", field="path")
    image = render(template, style, texts, images)
    return save(image, path, round(image.info["dpi"][0]))
