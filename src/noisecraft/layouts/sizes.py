"""Canvas sizes as people say them: "1080x1080" pixels, "A4" or "Letter" paper, "18x24in" signs.

Print sizes become pixels at the template's dpi (300 by default): A4 at 300 dpi is 2480 x 3508,
Letter 2550 x 3300, an 18 x 24 in sign 5400 x 7200. Add " landscape" to turn a paper size sideways.
"""

from __future__ import annotations

import re

from ..errors import UserError

PAPERS_MM = {"a3": (297, 420), "a4": (210, 297), "a5": (148, 210), "a6": (105, 148)}
PAPERS_IN = {"letter": (8.5, 11), "legal": (8.5, 14), "tabloid": (11, 17)}
UNITS_PER_INCH = {"in": 1.0, "mm": 25.4, "cm": 2.54}
MAX_PIXELS = 120_000_000  # a 24 x 36 in sign at 300 dpi is 78 million pixels
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*(\d+(?:\.\d+)?)\s*(px|in|mm|cm)?\s*$", re.IGNORECASE)


def is_print(spec: str) -> bool:
    """Whether `spec` is a physical size (paper, inches, millimetres) rather than pixels."""
    base = spec.lower().removesuffix(" landscape").strip()
    if base in PAPERS_MM or base in PAPERS_IN:
        return True
    match = _SIZE.match(base)
    return bool(match and (match.group(3) or "px").lower() != "px")


def canvas_pixels(spec: str, dpi: int = 300) -> tuple[int, int]:
    """(width, height) in pixels of a size spec at `dpi`; a spec it cannot read is a one-sentence `UserError`."""
    if not isinstance(spec, str):
        raise UserError(f"a size must be text such as \"1080x1080\", \"A4\" or \"18x24in\", not {spec!r}", field="size")
    if not isinstance(dpi, int) or not 72 <= dpi <= 1200:
        raise UserError(f"dpi {dpi!r} is out of range; use a whole number from 72 to 1200", field="dpi")
    base = spec.lower().strip()
    landscape = base.endswith(" landscape")
    base = base.removesuffix(" landscape").strip()
    if base in PAPERS_MM:
        width, height = (round(v / 25.4 * dpi) for v in PAPERS_MM[base])
    elif base in PAPERS_IN:
        width, height = (round(v * dpi) for v in PAPERS_IN[base])
    elif match := _SIZE.match(base):
        a, b, unit = float(match.group(1)), float(match.group(2)), (match.group(3) or "px").lower()
        scale = 1.0 if unit == "px" else dpi / UNITS_PER_INCH[unit]
        width, height = round(a * scale), round(b * scale)
    else:
        names = ", ".join(p.upper() for p in PAPERS_MM) + ", " + ", ".join(p.title() for p in PAPERS_IN)
        raise UserError(f"the size {spec!r} is not one noisecraft knows; use pixels like \"1080x1080\", "
                        f"inches like \"18x24in\", or a paper name ({names})", field="size")
    if landscape:
        width, height = height, width
    if width < 16 or height < 16 or width * height > MAX_PIXELS:
        raise UserError(f"the size {spec!r} at {dpi} dpi is {width}x{height} pixels; use between 16x16 and "
                        f"{MAX_PIXELS:,} pixels in all", field="size")
    return width, height
