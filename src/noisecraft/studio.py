"""Midjourney's workflow over `Pipeline`: a prompt with ``--ar``/``--seed``/``--no``/``--chaos``/``--q``
flags makes a 2x2 grid; each picture can then be upscaled, varied (subtle, strong, in a region),
zoomed out or panned. Each operation here turns what the user did into a `Request` plus the start
picture and mask it needs (a `Step`); the server queues it like any other request, and
`keep_outside` puts the parent's pixels back outside the repainted region.

    prompt, flags = parse("a palm tree at dusk --ar 16:9 --no people --seed 7")
    step = imagine(prompt, flags, traits)          # four pictures, seeds 7..10
    step = vary(parent_picture, parent_request, "subtle", seed=11)
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .errors import UserError
from .images import outpaint_canvas
from .settings import Request

GRID = 4
ASPECTS = ("1:1", "4:5", "2:3", "3:2", "16:9", "9:16")
VARY = {"subtle": 0.5, "strong": 0.85}  # img2img strengths of Vary (Subtle) and Vary (Strong)
QUALITY = {0.25: 0.5, 0.5: 0.75, 1: 1.0, 2: 1.5}  # --q: the model's default steps times this
ZOOMS = (1.5, 2.0)
PAN = 0.5  # a pan adds half the picture's width (or height) on that side
FLAG = re.compile(r"(?:^|\s)--(\w+)")


@dataclass(frozen=True)
class Flags:
    """The Midjourney parameters typed after the prompt."""

    aspect: str = "1:1"
    seed: int | None = None
    no: str = ""  # the negative prompt
    chaos: int = 0  # 0-100: how different the four pictures of a grid are
    quality: float = 1.0
    steps: int | None = None


@dataclass
class Step:
    """What one studio operation draws: `request` (with `init`/`mask` for img2img and inpainting),
    and the lineage it records: `operation` and `strength`."""

    request: Request
    operation: str
    strength: float | None = None
    init: Image.Image | None = None
    mask: Image.Image | None = None
    guidance: list[float] = field(default_factory=list)  # per picture, when --chaos spreads them
    offset: tuple[int, int] = (0, 0)  # where the parent sits in an outpainting canvas


def parse(text: str) -> tuple[str, Flags]:
    """(the prompt, its flags) from what the user typed: ``a fox --ar 16:9 --no text, people --chaos 30``."""
    match = FLAG.search(text)
    prompt, rest = (text[:match.start()].strip(), text[match.start():]) if match else (text.strip(), "")
    values: dict = {}
    for part in re.split(r"(?:^|\s)--", rest)[1:]:
        name, _, value = part.strip().partition(" ")
        name, value = name.lower(), value.strip()
        if name == "ar" or name == "aspect":
            values["aspect"] = _aspect(value)
        elif name == "seed":
            values["seed"] = _integer(value, "--seed", 0, 2**32 - 1)
        elif name == "no":
            values["no"] = value.strip(" ,")
        elif name in ("chaos", "c"):
            values["chaos"] = _integer(value, "--chaos", 0, 100)
        elif name in ("q", "quality"):
            values["quality"] = _quality(value)
        elif name == "steps":
            values["steps"] = _integer(value, "--steps", 1, 1000)
        else:
            raise UserError(f"unknown parameter --{name}; the studio knows --ar, --seed, --no, --chaos, --q and --steps",
                            field="prompt")
    return prompt, Flags(**values)


def size_for(aspect: str, native: int, factor: int) -> tuple[int, int]:
    """Width and height (multiples of `factor`) closest to `aspect` with about the model's native pixel
    count: the ratio counts four times as much as the pixel count (a small model's few sizes)."""
    w, h = map(int, aspect.split(":"))
    sides = range(factor, 2 * native + 1, factor)
    return min(((x, y) for x in sides for y in sides),
               key=lambda s: abs(math.log(s[0] / s[1] * h / w)) + 0.25 * abs(math.log(s[0] * s[1] / native ** 2)))


def imagine(prompt: str, flags: Flags, native: int, factor: int, defaults: dict) -> Step:
    """A fresh 2x2 grid: four pictures, seeds seed..seed+3 (one batch), at the flags' aspect ratio."""
    width, height = size_for(flags.aspect, native, factor)
    steps = flags.steps or max(1, round(defaults["steps"] * flags.quality))
    request = Request(prompt, negative_prompt=flags.no, seed=flags.seed, width=width, height=height, steps=steps,
                      num_images=GRID, batch_size=GRID)
    return Step(request, "imagine", guidance=spread(defaults["guidance_scale"], flags.chaos))


def spread(guidance: float, chaos: int) -> list[float]:
    """--chaos: the four pictures drawn at guidance scales spread around the model's (at 100: from a fifth
    to nearly twice it), so prompts are followed loosely or tightly; 0 keeps one scale (and one batch)."""
    if chaos == 0:
        return []
    return [round(max(1.0, guidance * (1 + 0.8 * chaos / 100 * u)), 3) for u in (-1.0, -1 / 3, 1 / 3, 1.0)]


def vary(parent: Image.Image, request: Request, mode: str, seed: int | None, prompt: str | None = None) -> Step:
    """Vary (Subtle) / (Strong): four img2img pictures of `parent` with new seeds; `prompt` (remix) replaces its prompt."""
    if mode not in VARY:
        raise UserError(f"vary takes subtle or strong, not {mode!r}", field="mode")
    request = _child(request, parent, seed, prompt, strength=VARY[mode])
    return Step(request, f"vary ({mode})", VARY[mode], init=parent)


def region(parent: Image.Image, mask: Image.Image, request: Request, seed: int | None, prompt: str | None = None) -> Step:
    """Vary (Region): repaint where `mask` is white (four pictures); the rest stays the parent's pixels."""
    mask = mask.convert("L").resize(parent.size, Image.NEAREST)
    if not np.asarray(mask).max() >= 128:
        raise UserError("the mask is empty: paint over the part of the picture to change", field="mask")
    return Step(_child(request, parent, seed, prompt, strength=1.0), "vary (region)", 1.0, init=parent, mask=mask)


def zoom_out(parent: Image.Image, request: Request, factor: float, seed: int | None, multiple: int,
             prompt: str | None = None) -> Step:
    """Zoom out: a canvas `factor` times larger with `parent` in its centre; the model paints the border."""
    if factor not in ZOOMS:
        raise UserError(f"zoom out takes {' or '.join(map(str, ZOOMS))}, not {factor}", field="factor")
    grow_w, grow_h = _multiple(parent.width * (factor - 1), 2 * multiple), _multiple(parent.height * (factor - 1), 2 * multiple)
    sides = (grow_w // 2, grow_h // 2, grow_w - grow_w // 2, grow_h - grow_h // 2)
    return _outpaint(parent, request, sides, f"zoom out {factor:g}x", seed, prompt, multiple)


def pan(parent: Image.Image, request: Request, direction: str, seed: int | None, multiple: int,
        prompt: str | None = None) -> Step:
    """Pan left/right/up/down: the canvas grows by half the picture on that side; the model paints the new strip."""
    w, h = _multiple(parent.width * PAN, multiple), _multiple(parent.height * PAN, multiple)
    sides = {"left": (w, 0, 0, 0), "right": (0, 0, w, 0), "up": (0, h, 0, 0), "down": (0, 0, 0, h)}
    if direction not in sides:
        raise UserError(f"pan takes left, right, up or down, not {direction!r}", field="direction")
    return _outpaint(parent, request, sides[direction], f"pan {direction}", seed, prompt, multiple)


def keep_outside(parent: Image.Image, drawn: Image.Image, mask: Image.Image, offset: tuple[int, int] = (0, 0)) -> Image.Image:
    """`drawn` with the parent's own pixels wherever `mask` is black (the model's decoder would shift them a little)."""
    out = np.asarray(drawn.convert("RGB")).copy()
    keep = np.asarray(mask.convert("L")) < 128
    x, y = offset
    region = out[y:y + parent.height, x:x + parent.width]
    inside = keep[y:y + parent.height, x:x + parent.width]
    region[inside] = np.asarray(parent.convert("RGB"))[inside]
    picture = Image.fromarray(out)
    picture.info = dict(drawn.info)
    return picture


def _outpaint(parent, request, sides, operation, seed, prompt, multiple) -> Step:
    canvas, mask = outpaint_canvas(parent.convert("RGB"), sides, multiple)
    request = dataclasses.replace(_child(request, canvas, seed, prompt, strength=1.0), width=canvas.width, height=canvas.height)
    step = Step(request, operation, 1.0, init=canvas, mask=mask)
    step.offset = sides[:2]
    return step


def _child(request: Request, parent: Image.Image, seed: int | None, prompt: str | None, strength: float) -> Request:
    return dataclasses.replace(request, prompt=request.prompt if prompt is None else prompt, seed=seed, strength=strength,
                               width=parent.width, height=parent.height, num_images=GRID, batch_size=GRID)


def _multiple(value: float, factor: int) -> int:
    """The multiple of `factor` nearest `value` (halves round up)."""
    return max(factor, math.floor(value / factor + 0.5) * factor)


def _aspect(value: str) -> str:
    value = value.strip()
    if value not in ASPECTS:
        raise UserError(f"--ar takes one of {', '.join(ASPECTS)}, not {value or 'nothing'}", field="prompt")
    return value


def _integer(value: str, flag: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d+", value) or not low <= int(value) <= high:
        raise UserError(f"{flag} takes a whole number from {low} to {high}, not {value or 'nothing'}", field="prompt")
    return int(value)


def _quality(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1
    if number not in QUALITY:
        raise UserError(f"--q takes one of .25, .5, 1 or 2, not {value or 'nothing'}", field="prompt")
    return QUALITY[number]
