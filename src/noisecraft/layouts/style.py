"""A business's look: five colour roles, two font roles and an optional logo.

Templates never name a colour or a font file; they name a role ("primary", "heading"), and the
`Style` says what that role is for this business. `Style.default()` works out of the box with the
DejaVu fonts bundled in `fonts/` (their licence is `fonts/LICENSE-DejaVu.txt`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageFont

from ..errors import UserError

COLOUR_ROLES = ("primary", "secondary", "accent", "background", "text")
FONT_ROLES = ("heading", "body")
FONTS = Path(__file__).parent / "fonts"

RGB = tuple[int, int, int]

DEFAULT_COLOURS: dict[str, RGB] = {
    "primary": (28, 61, 90),  # deep navy: bands and headings
    "secondary": (226, 221, 211),  # warm stone: quiet panels, empty picture slots
    "accent": (190, 62, 40),  # terracotta: buttons and prices (white on it is 5.3:1)
    "background": (250, 248, 244),  # off-white paper
    "text": (33, 33, 33),  # near-black body text
}


@dataclass(frozen=True)
class Style:
    """Colours by role (RGB 0-255), font files by role (TTF/OTF) and a logo (RGBA) or None."""

    colours: dict[str, RGB] = field(default_factory=lambda: dict(DEFAULT_COLOURS))
    fonts: dict[str, Path] = field(default_factory=lambda: {"heading": FONTS / "DejaVuSans-Bold.ttf",
                                                            "body": FONTS / "DejaVuSans.ttf"})
    logo: Image.Image | None = None

    def __post_init__(self):
        missing = [role for role in COLOUR_ROLES if role not in self.colours]
        if missing:
            raise UserError(f"the style has no colour for {', '.join(missing)}; give all of {', '.join(COLOUR_ROLES)}",
                            field="colours")
        for role, value in self.colours.items():
            if not (isinstance(value, (tuple, list)) and len(value) == 3
                    and all(isinstance(c, int) and 0 <= c <= 255 for c in value)):
                raise UserError(f"the style's {role} colour {value!r} is not three whole numbers from 0 to 255",
                                field="colours")
        missing = [role for role in FONT_ROLES if role not in self.fonts]
        if missing:
            raise UserError(f"the style has no font for {', '.join(missing)}; give both heading and body",
                            field="fonts")
        for role, path in self.fonts.items():
            font_file(path, role)
        if self.logo is not None and not isinstance(self.logo, Image.Image):
            raise UserError("the style's logo must be a picture; read it with load_logo(path)", field="logo")

    @classmethod
    def default(cls) -> Style:
        """Navy, stone and terracotta on off-white, DejaVu Sans Bold headings and DejaVu Sans body, no logo."""
        return cls()

    def with_logo(self, logo: Image.Image | None) -> Style:
        """The same style with another logo (RGBA picture, or None for none)."""
        return replace(self, logo=None if logo is None else logo.convert("RGBA"))

    def colour(self, role: str) -> RGB:
        return tuple(self.colours[role])

    def font(self, role: str, size: int) -> ImageFont.FreeTypeFont:
        """The font of `role` at `size` pixels (the em size)."""
        return _font(str(self.fonts[role]), max(1, int(size)))


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def font_file(path, role: str) -> Path:
    """`path` if it is a font Pillow can read, else a one-sentence `UserError` naming the role."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the {role} font {path} does not exist", field="fonts")
    try:
        ImageFont.truetype(str(path), 12)
    except OSError:
        raise UserError(f"the {role} font {path} is not a TrueType or OpenType font", field="fonts") from None
    return path


def load_logo(path: str | Path, height: int = 512) -> Image.Image:
    """A logo as an RGBA picture: a PNG (or JPEG/WebP) with its alpha, or an SVG rendered at `height` pixels.

    A missing or unreadable file is a one-sentence `UserError`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"the logo {path} does not exist", field="logo")
    if path.suffix.lower() in (".svg", ".svgz"):
        return _render_svg(path, height)
    from ..images import load_picture  # only here: it brings torch along

    return load_picture(path, f"the logo {path}").convert("RGBA")


def _render_svg(path: Path, height: int) -> Image.Image:
    import resvg_py

    if not 1 <= height <= 8192:
        raise UserError(f"a logo height of {height} pixels is out of range; use 1 to 8192", field="logo")
    try:
        data = resvg_py.svg_to_bytes(svg_path=str(path), height=int(height))
        logo = Image.open(io.BytesIO(bytes(data)))
        logo.load()
    except Exception:  # resvg raises ValueError for bad markup; a broken result is just as unreadable
        raise UserError(f"the logo {path} is not an SVG file noisecraft can read", field="logo") from None
    return logo.convert("RGBA")
