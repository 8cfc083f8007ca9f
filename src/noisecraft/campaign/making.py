"""Making one on-brand piece: a picture from a prompt, or a layout around pictures, written (signed when asked).

    maker = Maker(Pipeline.from_pretrained("builtin"), kit=load_kit("trattoria/"), sign=True)
    picture = maker.picture("a bowl of spaghetti", seed=3, size=(1080, 1080))
    piece = maker.layout("menu-card", {"name": "Spaghetti", "price": "$14"}, prompt="a bowl of spaghetti", seed=3)
    maker.write(piece, "spaghetti.png")

The CLI's generate/layout and the campaign runner all make their pieces here, so a picture is made the
same way everywhere: the kit's words, the model at its native pixel count in the wanted aspect, the
kit's colour step, Lanczos to the wanted size; then the layout; then metadata, watermark and signature.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..brand import brand_prompt
from ..errors import UserError
from ..pngmeta import amend_parameters
from ..presets import builtin
from ..settings import Request
from ..studio import size_for
from ..upscale import SUBTLE, enlarge, upscale


@dataclass
class Piece:
    """A finished picture and what went into it: `parts` are the photos and logo a layout placed (for the
    signature's ingredients), `source` the file an edit started from (its bytes as read, so a signed source's
    Content Credentials become this picture's parent) and `action` what the edit was (c2pa.edited, c2pa.resized)."""

    image: Image.Image
    parts: list[tuple[str, Image.Image]] = field(default_factory=list)
    source: bytes | None = None
    action: str = "c2pa.edited"  # with a source
    dpi: int | None = None


def request_for(kit, presets: list, prompt: str, negative: str, preset: str, seed: int | None,
                size: tuple[int, int] | None, model: tuple[int, int], steps: int | None = None) -> Request:
    """What to draw for a picture of `prompt` on brand that will be shown at `size`: the kit's words (and
    `preset`), at the model's native pixel count in `size`'s aspect (`model`: its native size and size factor)."""
    prompt, negative = brand_prompt(kit, prompt, negative, [preset] if preset else [], presets)
    width = height = None
    if size is not None:
        divisor = math.gcd(*size)
        width, height = size_for(f"{size[0] // divisor}:{size[1] // divisor}", *model)
    return Request(prompt, negative, steps, width=width, height=height, seed=seed)


def needs_redraw(drawn: tuple[int, int], size: tuple[int, int] | None) -> bool:
    """A picture shown at twice its drawn size or more gets the studio's 2x redraw first."""
    return size is not None and min(size[0] / drawn[0], size[1] / drawn[1]) >= 2


@dataclass
class Maker:
    pipe: object  # a noisecraft Pipeline (None: layouts of given photos only)
    kit: object = None  # a noisecraft.brand.BrandKit
    presets: list = field(default_factory=builtin)  # the presets a kit or a row may name
    colour_strength: float | None = None  # None: the kit's
    sign: bool = False  # C2PA Content Credentials and the invisible watermark
    identity: object = None  # a noisecraft.provenance.Identity; None with sign: the local self-signed one
    steps: int | None = None

    def picture(self, prompt: str, negative: str = "", preset: str = "", seed: int | None = None,
                size: tuple[int, int] | None = None) -> Image.Image:
        """A picture of `prompt` on brand, drawn at the model's native pixel count in `size`'s aspect and
        enlarged (Lanczos) to `size`; its parameters say so."""
        if self.pipe is None:
            raise UserError("drawing a picture needs a model; give --model, or give the photos with --image")
        request = request_for(self.kit, self.presets, prompt, negative, preset, seed, size,
                              (self.pipe.config.image_size, self.pipe.size_factor), self.steps)
        settings = self.pipe.resolve(request)
        image = self.pipe(settings)[0]
        if needs_redraw(image.size, size):
            # the studio's upscale path: one 2x redraw adds detail at the model's scale, Lanczos does the rest
            image, _ = upscale(self.pipe, image, 2, dataclasses.replace(request, seed=settings.seed), strength=SUBTLE)
        if self.kit is not None:
            image = self.kit.finish(image, self.colour_strength)
        if size is not None and image.size != tuple(size):
            text = image.info.get("parameters")
            drawn = image.size
            image = enlarge(image, *size)
            if text:
                image.info["parameters"] = amend_parameters(text, Size=f"{size[0]}x{size[1]}",
                                                            Resize=f"Lanczos from {drawn[0]}x{drawn[1]}")
        return image

    def layout(self, template, texts: dict[str, str], images: dict[str, Image.Image] | None = None, *, prompt: str = "",
               negative: str = "", preset: str = "", seed: int | None = None) -> Piece:
        """`template` (a name, file or `Template`) in the kit's style with `texts`; image slots not in `images` are
        drawn from `prompt` (slot k with seed + k) at their own aspect. Banned words in the texts are refused."""
        from ..layouts import Style, compose, load_template

        template = load_template(template) if isinstance(template, (str, Path)) else template
        for name, text in texts.items():
            if self.kit is not None:
                self.kit.check_words(text, f"the {name} text")
        images = dict(images or {})
        style = self.kit.style() if self.kit is not None else Style.default()
        empty = compose(template, style, texts, images).empty_slots if prompt else ()
        parameters = None
        for k, slot in enumerate(empty):
            box = slot_size(template, slot)
            images[slot] = self.picture(prompt, negative, preset, None if seed is None else seed + k, box)
            parameters = parameters or images[slot].info.get("parameters")
        return compose_piece(template, style, texts, images, parameters)

    def write(self, piece: Piece | Image.Image, path: str | Path) -> Path:
        """`write_piece`, signed when this maker signs."""
        return write_piece(piece, path, self.sign, self.identity)


def compose_piece(template, style, texts: dict[str, str], images: dict[str, Image.Image],
                  parameters: str | None = None) -> Piece:
    """The layout composed, every image slot filled (else one sentence naming the empty ones), its parameters those
    of the picture drawn for it (`parameters`) with the layout named, its photos and logo as its parts."""
    from ..layouts import compose

    made = compose(template, style, texts, images)
    if made.empty_slots:
        raise UserError(f"the {template.name} layout's {', '.join(made.empty_slots)} slot has no picture; give it "
                        "one, or give a prompt to draw it", field="images")
    if parameters:
        made.image.info["parameters"] = amend_parameters(parameters, Layout=template.name)
    parts = [(f"{name} photo", picture) for name, picture in images.items()]
    if style.logo is not None:
        parts.append(("logo", style.logo))
    return Piece(made.image, parts, dpi=template.dpi)


FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".pdf": "pdf"}


def piece_bytes(piece: Piece | Image.Image, kind: str = "png", sign: bool = False, identity=None, title: str = "") -> bytes:
    """`piece` as a png, jpeg, webp or pdf file's bytes, with its parameters; with `sign`: the invisible watermark,
    then Content Credentials signed by `identity` (None: the local self-signed one) naming the layout's photos and
    logo as placed ingredients (and an edit's source as its parent). PDFs are not signed."""
    from ..pngmeta import image_bytes, png_bytes
    from ..provenance import Ingredient, finish, local_identity

    piece = piece if isinstance(piece, Piece) else Piece(piece)
    if kind == "pdf":
        import io

        buffer = io.BytesIO()
        dpi = float(piece.dpi or 300)
        piece.image.convert("RGB").save(buffer, "PDF", resolution=dpi, quality=95, subsampling=0, title=title or "layout")
        return buffer.getvalue()
    if not sign:
        return image_bytes(piece.image, kind)
    ingredients = [Ingredient(png_bytes(part, ""), "png", name, "componentOf") for name, part in piece.parts]
    if piece.source is not None:
        ingredients.insert(0, Ingredient(piece.source, _format_of(piece.source), "source picture", "parentOf"))
    return finish(piece.image, kind, identity=identity or local_identity(), title=title or f"noisecraft.{kind}",
                  action=piece.action if piece.source is not None else "c2pa.created", ingredients=tuple(ingredients))


def _format_of(data: bytes) -> str:
    """png, jpeg or webp, by the file's first bytes (a source of another kind is one sentence)."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    raise UserError("a signed edit's source must be a PNG, JPEG or WebP file")


def write_piece(piece: Piece | Image.Image, path: str | Path, sign: bool = False, identity=None) -> Path:
    """`piece_bytes` written to `path` (.png, .jpg, .webp or .pdf by its suffix) atomically."""
    from ..provenance import write

    path = Path(path).expanduser()
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"write the picture as .png, .jpg, .webp or .pdf, not {path.suffix or 'a name without a suffix'}")
    if not path.parent.is_dir():
        raise UserError(f"the folder {path.parent} does not exist; make it or choose another --out")
    return write(path, piece_bytes(piece, kind, sign, identity, path.name))


def slot_size(template, slot: str) -> tuple[int, int]:
    """The pixel size of image slot `slot` (a grid's cells: its first cell's)."""
    from ..layouts import ImageSlot

    for box in template.layout(6):
        if isinstance(box, ImageSlot) and box.name == slot:
            left, top, right, bottom = box.rect.pixels(template.size)
            return max(8, right - left), max(8, bottom - top)
    return template.size
