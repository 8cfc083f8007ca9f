"""A brand's colours: names for the prompt, how close a picture is to them, and a step that pulls it closer.

All colour maths is CIELAB (D65) through scikit-image; distances are CIEDE2000 (Sharma, Wu and Dalal
2005), `skimage.color.deltaE_ciede2000`. A difference under ~2 is hard to see, ~10 is "a different shade".

    names = [colour_name(c) for c in palette]          # "brick red", "cream", ...
    before = palette_report(picture, palette).median    # median dE of the 5 dominant colours to the palette
    after = palette_report(recolour(picture, palette, 0.5), palette).median
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab

from ..errors import UserError, shown

RGB = tuple[int, int, int]

# Everyday colour names a text encoder knows, with a typical sRGB value for each (noisecraft's own table).
NAMES: dict[str, str] = {
    "black": "#111111", "charcoal grey": "#36454f", "slate grey": "#708090", "grey": "#8c8c8c", "silver": "#c0c0c0",
    "white": "#ffffff", "off-white": "#f5f2ea", "cream": "#fdf3d6", "ivory": "#fffff0", "beige": "#e8d9b5",
    "sand": "#d8c39a", "tan": "#c8a27a", "caramel": "#b5773b", "brown": "#7b4a22", "chocolate brown": "#4e2a14",
    "espresso": "#2f1b12", "maroon": "#7a1f2b", "burgundy": "#800020", "brick red": "#a23b2a", "red": "#d62828",
    "crimson": "#c1121f", "coral": "#ff7f50", "salmon pink": "#fa8072", "pink": "#f4a6c0", "hot pink": "#ff3e9a",
    "blush pink": "#f2c6c2", "magenta": "#c2185b", "plum": "#6d2e5b", "purple": "#6a3d9a", "lavender": "#b9a6e0",
    "violet": "#8f5bd6", "navy blue": "#1b2a4a", "royal blue": "#2350c8", "blue": "#1f6fd1", "sky blue": "#7cc3ee",
    "baby blue": "#bcdcf5", "teal": "#0f7c7c", "turquoise": "#30c5c0", "aqua": "#7fe3dc", "mint green": "#a8e6c1",
    "sage green": "#9caf88", "olive green": "#6b7a2a", "forest green": "#22573a", "emerald green": "#10956a",
    "green": "#2e9e3e", "lime green": "#9ccc2c", "mustard yellow": "#d9a520", "golden yellow": "#f2b705",
    "yellow": "#f7dc2a", "lemon yellow": "#fff176", "butter yellow": "#f9e29c", "peach": "#ffcba4",
    "apricot": "#f7a66b", "orange": "#f07f13", "burnt orange": "#c75b12", "terracotta": "#c5603f", "rust": "#a4451f",
    "gold": "#c9a227", "copper": "#b06a3b", "bronze": "#8c6a32",
}
SKIN_PROTECTION = 0.25  # the share of the pull a skin-toned pixel gets
LIGHTNESS_WEIGHT = 2.0  # kL when choosing each colour's palette target: hue and chroma count more than lightness
LIGHTNESS_MOVE = 0.5  # lightness moves half as far as hue and chroma, so shading and tone stay


def hex_rgb(text: str, what: str = "a colour") -> RGB:
    """'#a23b2a', 'a23b2a' or '#a32' as (r, g, b); anything else a one-sentence error naming `what`."""
    value = str(text).strip().lstrip("#")
    if re.fullmatch(r"[0-9a-fA-F]{3}", value):
        value = "".join(ch * 2 for ch in value)
    if not re.fullmatch(r"[0-9a-fA-F]{6}", value):
        raise UserError(f"{what} is {shown(text)}; give a hex colour such as \"#a23b2a\"")
    return tuple(int(value[k:k + 2], 16) for k in (0, 2, 4))


def to_hex(rgb: RGB) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def lab(colours) -> np.ndarray:
    """sRGB colours (..., 3) in 0-255 as CIELAB (D65)."""
    return rgb2lab(np.asarray(colours, dtype=np.float64) / 255.0)


_NAME_LAB = lab([hex_rgb(v) for v in NAMES.values()])


def colour_name(rgb: RGB) -> str:
    """The everyday name nearest to `rgb` by CIEDE2000 ("brick red" for #a23b2a)."""
    distances = deltaE_ciede2000(_NAME_LAB, lab(rgb)[None])
    return list(NAMES)[int(np.argmin(distances))]


def _pixels(image: Image.Image, side: int = 96) -> np.ndarray:
    """The picture's pixels in Lab, from a copy at most `side` pixels on its long side (k-means needs no more)."""
    small = image.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.BOX)
    return lab(np.asarray(small).reshape(-1, 3))


def _clusters(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means in Lab (scikit-learn, fixed seed): the centres and each one's share of the pixels, largest first."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(np.unique(np.round(points, 1), axis=0))))
    fit = KMeans(n_clusters=k, n_init=4, random_state=0).fit(points)
    shares = np.bincount(fit.labels_, minlength=k) / len(points)
    order = np.argsort(-shares)
    return fit.cluster_centers_[order], shares[order]


@dataclass(frozen=True)
class Dominant:
    colour: RGB
    share: float  # of the picture's pixels
    nearest: RGB  # the nearest palette colour
    delta_e: float  # CIEDE2000 to it


@dataclass(frozen=True)
class PaletteReport:
    colours: list[Dominant]

    @property
    def median(self) -> float:
        """The median CIEDE2000 from the dominant colours to their nearest palette colour."""
        return float(np.median([c.delta_e for c in self.colours]))

    def lines(self) -> list[str]:
        rows = [f"{to_hex(c.colour)} {c.share:5.1%}  nearest {to_hex(c.nearest)} ({colour_name(c.nearest)})  "
                f"dE {c.delta_e:5.1f}" for c in self.colours]
        return rows + [f"median dE {self.median:.1f} ({verdict(self.median)})"]


def verdict(median: float) -> str:
    return "on palette" if median <= 10 else "near the palette" if median <= 20 else "off palette"


def _nearest(points: np.ndarray, palette_lab: np.ndarray, lightness: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    distances = deltaE_ciede2000(points[:, None, :], palette_lab[None, :, :], kL=lightness)
    index = np.argmin(distances, axis=1)
    return index, distances[np.arange(len(points)), index]


def palette_report(image: Image.Image, palette: list[RGB], k: int = 5) -> PaletteReport:
    """The picture's `k` dominant colours (k-means in Lab) and each one's CIEDE2000 to the nearest palette colour."""
    centres, shares = _clusters(_pixels(image), k)
    index, distances = _nearest(centres, lab(palette))
    rgb = np.clip(np.round(lab2rgb(centres) * 255), 0, 255).astype(int)
    return PaletteReport([Dominant(tuple(map(int, c)), float(s), tuple(palette[i]), float(d))
                          for c, s, i, d in zip(rgb, shares, index, distances)])


def _skin(points: np.ndarray) -> np.ndarray:
    """Pixels in the range of human skin tones (warm hue 20-75 degrees, moderate chroma, mid lightness)."""
    hue = np.degrees(np.arctan2(points[..., 2], points[..., 1]))
    chroma = np.hypot(points[..., 1], points[..., 2])
    return (hue > 20) & (hue < 75) & (chroma > 8) & (chroma < 45) & (points[..., 0] > 25) & (points[..., 0] < 92)


def recolour(image: Image.Image, palette: list[RGB], strength: float = 0.5, k: int = 5,
             protect_skin: bool = True) -> Image.Image:
    """Pull the picture toward the palette in CIELAB: a palette-constrained colour transfer.

    The picture's `k` dominant colours (k-means in Lab) each move `strength` of the way to their nearest
    palette colour (chosen by CIEDE2000 with kL = 2, so a light green goes to the palette's green, not its
    cream; lightness moves half as far, so shading stays); every pixel moves by a smooth blend of those moves (Gaussian weights on its distance to
    each dominant colour, as in palette-based recolouring, Chang et al. 2015), so shading and edges stay
    and no pixel jumps between colours. Skin-toned pixels take a quarter of the move (`protect_skin`).
    `strength` 0 returns the picture unchanged, 1 moves the dominant colours onto the palette.
    """
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"the colour strength is {strength}; give a number from 0 (off) to 1", field="colour_strength")
    rgb = image.convert("RGB")
    if strength == 0 or not palette:
        return rgb.copy()
    sample = _pixels(rgb)
    centres, _ = _clusters(sample, k)
    target = lab(palette)[_nearest(centres, lab(palette), LIGHTNESS_WEIGHT)[0]]
    moves = (target - centres) * strength * np.array([LIGHTNESS_MOVE, 1.0, 1.0])
    spread = max(np.median(np.min(np.linalg.norm(sample[:, None] - centres[None], axis=2), axis=1)) * 2.0, 8.0)
    points = lab(np.asarray(rgb))
    weights = np.exp(-np.sum((points[..., None, :] - centres) ** 2, axis=-1) / (2 * spread ** 2))
    weights /= np.maximum(weights.sum(axis=-1, keepdims=True), 1e-12)
    shift = weights @ moves
    if protect_skin:
        shift *= np.where(_skin(points), SKIN_PROTECTION, 1.0)[..., None]
    with warnings.catch_warnings():  # a pull past sRGB's gamut is clipped, which is what we want
        warnings.simplefilter("ignore", UserWarning)
        out = np.clip(lab2rgb(points + shift) * 255 + 0.5, 0, 255).astype(np.uint8)
    picture = Image.fromarray(out, "RGB")
    picture.info.update({k: v for k, v in image.info.items() if k == "parameters"})
    return picture
