"""Readable text: the WCAG 2.x contrast ratio, measured against the pixels the text sits on.

`contrast_ratio` is WCAG 2.x's (L1 + 0.05) / (L2 + 0.05) of relative luminances (sRGB decoded to
linear light, weighted 0.2126 R + 0.7152 G + 0.0722 B). Under a photo there is no single background
colour, so `worst_ratio` takes the pixels under the text's extent and rates the text colour against
their 10th and 90th percentile luminance, keeping the lower ratio: the text must stand out from the
darkest and the lightest tenth of what is behind it alike, while a few stray specks do not decide.
The target is 4.5:1 (WCAG AA for body text), for every text, large or not.

`backing` finds the panel that brings a text up to the target: a colour of the style (or black or
white) and the least opacity of 80%, 90% or 100% that reaches 4.5:1 on the composited pixels.
"""

from __future__ import annotations

import numpy as np

TARGET = 4.5
BLACK, WHITE = (0, 0, 0), (255, 255, 255)
OPACITIES = (0.8, 0.9, 1.0)

RGB = tuple[int, int, int]


def _linear(channel):
    c = np.asarray(channel, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def relative_luminance(rgb) -> float:
    """WCAG 2.x relative luminance of an sRGB colour (0-255 channels): 0 for black, 1 for white."""
    r, g, b = _linear(np.asarray(rgb[:3]))
    return float(0.2126 * r + 0.7152 * g + 0.0722 * b)


def luminance(pixels: np.ndarray) -> np.ndarray:
    """Relative luminance of every pixel of an [..., 3] uint8 array."""
    linear = _linear(pixels[..., :3])
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def ratio_of(l1: float, l2: float) -> float:
    """The contrast ratio of two relative luminances (1 to 21)."""
    light, dark = max(l1, l2), min(l1, l2)
    return (light + 0.05) / (dark + 0.05)


def contrast_ratio(rgb1, rgb2) -> float:
    """The WCAG 2.x contrast ratio of two sRGB colours, from 1 (same) to 21 (black on white)."""
    return ratio_of(relative_luminance(rgb1), relative_luminance(rgb2))


def worst_ratio(colour, pixels: np.ndarray) -> float:
    """The lower ratio of `colour` against the 10th and the 90th percentile luminance of `pixels`."""
    values = luminance(np.asarray(pixels).reshape(-1, 3)[:: max(1, pixels.size // 3 // 200_000)])
    ink = relative_luminance(colour)
    low, high = np.percentile(values, [10, 90])
    return min(ratio_of(ink, low), ratio_of(ink, high))


def best_text_colour(pixels: np.ndarray, preferred: list[RGB]) -> tuple[RGB, float]:
    """The first of `preferred` that reaches the target on `pixels`, else black or white, whichever is better."""
    for colour in preferred:
        ratio = worst_ratio(colour, pixels)
        if ratio >= TARGET:
            return colour, ratio
    return max(((c, worst_ratio(c, pixels)) for c in (BLACK, WHITE)), key=lambda pair: pair[1])


def composite(pixels: np.ndarray, colour, opacity: float) -> np.ndarray:
    """`colour` laid over `pixels` at `opacity`, as 8-bit sRGB (what Pillow's blending gives)."""
    mixed = opacity * np.asarray(colour, dtype=np.float64) + (1 - opacity) * pixels[..., :3]
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def backing(text: RGB, pixels: np.ndarray, palette: list[RGB]) -> tuple[RGB, RGB, float, float]:
    """(text colour, panel colour, opacity, ratio) for a panel behind `text` over `pixels`.

    Panel colours tried: the palette's colours that are at least 7:1 against the text (in palette
    order, so a brand's own colour comes first), then black and white; each at the least opacity that
    reaches the target. If none does (a mid-grey text), the text turns black or white on an opaque
    panel of the other.
    """
    strong = [c for c in palette if contrast_ratio(text, c) >= 7]
    plain = sorted((BLACK, WHITE), key=lambda c: -contrast_ratio(text, c))
    for panel in strong + plain:
        for opacity in OPACITIES:
            ratio = worst_ratio(text, composite(pixels, panel, opacity))
            if ratio >= TARGET:
                return text, panel, opacity, ratio
    ink = WHITE if relative_luminance(text) > 0.18 else BLACK  # the nearer of the two to what was asked
    return ink, (BLACK if ink == WHITE else WHITE), 1.0, 21.0
