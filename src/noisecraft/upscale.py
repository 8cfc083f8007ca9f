"""Upscaling a picture: enlarge its pixels (Lanczos), then let the model redraw the enlarged picture
tile by tile at low strength (A1111's "SD upscale"), so that new detail appears where plain
resampling only blurs.

The tiles are about the model's native size (it draws best there), overlap by `overlap` pixels and
are blended with feathered weights (linear ramps across each overlap), so no grid shows. Tile k of
a picture is drawn with seed + k: the same request gives the same picture. One `resolve` checks the
whole job; each tile is then drawn from those settings.

    picture, how = upscale(pipe, image, 2, Request("a palm tree", seed=3), strength=0.3)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from .errors import UserError
from .pipeline import Pipeline
from .pngmeta import amend_parameters
from .settings import Limits, Request, parameters_text

RESAMPLERS = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}  # pixel upscalers, A1111's names
SUBTLE, CREATIVE = 0.25, 0.45  # strengths of the studio's "Upscale (Subtle)" and "(Creative)"
FLAT = 2.0  # a tile whose pixels vary less than this (std, of 255) is kept as enlarged: the model would draw the prompt into it
MAX_SCALE = 8


def tile_layout(length: int, native: int, overlap: int, factor: int) -> tuple[int, list[int]]:
    """(tile size, tile starts) covering `length` pixels with tiles of at least `native` pixels (the model
    draws worse below its size) that overlap by at least `overlap`: as few as that allows, each a multiple
    of `factor`, evenly spread."""
    count = max(1, (length - overlap) // (native - overlap))
    if count == 1:
        return length, [0]
    tile = min(length, -(-math.ceil((length + (count - 1) * overlap) / count) // factor) * factor)
    starts = [round(k * (length - tile) / (count - 1)) // factor * factor for k in range(count - 1)]
    return tile, starts + [length - tile]


def feather(size: int, starts: list[int], index: int) -> np.ndarray:
    """Blend weights along one axis for the tile at starts[index]: 1, rising and falling linearly over
    the pixels it shares with its neighbours (never 0, so every pixel is covered)."""
    start, weights = starts[index], np.ones(size, dtype=np.float64)
    if index > 0:
        shared = starts[index - 1] + size - start
        weights[:shared] = np.minimum(weights[:shared], (np.arange(shared) + 1) / (shared + 1))
    if index < len(starts) - 1:
        shared = start + size - starts[index + 1]
        weights[size - shared:] = np.minimum(weights[size - shared:], (np.arange(shared, 0, -1)) / (shared + 1))
    return weights


def enlarge(image: Image.Image, width: int, height: int, upscaler="Lanczos") -> Image.Image:
    """The picture's pixels resampled to width x height: by a resampler named in RESAMPLERS, or by an
    upscaler network (`checkpoints.upscaler.PixelUpscaler`: run until it is large enough, then Lanczos
    to the exact size)."""
    image = image.convert("RGB")
    if not isinstance(upscaler, str):
        while image.width < width or image.height < height:
            image = upscaler(image)
        return image.resize((width, height), Image.LANCZOS) if image.size != (width, height) else image
    if upscaler not in RESAMPLERS:
        raise UserError(f"unknown upscaler {upscaler!r}; choose one of: {', '.join(RESAMPLERS)}", field="upscaler")
    return image.resize((width, height), RESAMPLERS[upscaler])


def upscaler_name(upscaler) -> str:
    return upscaler if isinstance(upscaler, str) else upscaler.name


def upscale(pipe: Pipeline, image: Image.Image, scale: float, request: Request, *, strength: float = SUBTLE,
            upscaler="Lanczos", overlap: int | None = None, limits: Limits | None = None,
            callback=None) -> tuple[Image.Image, str]:
    """`image` `scale` times larger, redrawn by `pipe` tile by tile at `strength` (0: pixels only).

    `request` gives the prompt, sampler, steps and seed the tiles are drawn with (its size and
    strength are the upscaler's). Returns the picture (with its A1111 parameters) and one line
    saying what was done.
    """
    if not 1 <= scale <= MAX_SCALE:
        raise UserError(f"the upscale factor must be from 1 to {MAX_SCALE}, not {scale}", field="scale")
    factor = pipe.size_factor
    width = max(factor, round(image.width * scale / factor) * factor)
    height = max(factor, round(image.height * scale / factor) * factor)
    largest = (limits or Limits()).side(pipe.config.image_size)
    if max(width, height) > largest:
        raise UserError(f"{scale:g}x of a {image.width}x{image.height} picture is {width}x{height}; the largest side "
                        f"allowed is {largest} px", field="scale")
    big = enlarge(image, width, height, upscaler)
    name = upscaler_name(upscaler)
    if strength == 0 or pipe.vae is None:
        if image.info.get("parameters"):
            big.info["parameters"] = amend_parameters(image.info["parameters"], Size=f"{width}x{height}",
                                                      Upscale=f"{scale:g}x {name}")
        return big, f"{name} to {width}x{height}" + (" (this model cannot redraw a picture)" if strength else "")
    native = pipe.config.image_size
    overlap = overlap if overlap is not None else max(factor, native // 8 // factor * factor)
    tile_w, xs = tile_layout(width, native, overlap, factor)
    tile_h, ys = tile_layout(height, native, overlap, factor)
    first = big.crop((xs[0], ys[0], xs[0] + tile_w, ys[0] + tile_h))
    s = pipe.resolve(dataclasses.replace(request, width=tile_w, height=tile_h, strength=strength, num_images=1,
                                         batch_size=1), init_image=first, limits=limits)
    total = np.zeros((height, width, 3))
    weight = np.zeros((height, width, 1))
    redrawn = 0
    for row, y in enumerate(ys):
        for column, x in enumerate(xs):
            k = row * len(xs) + column
            crop = big.crop((x, y, x + tile_w, y + tile_h))
            drawn = np.asarray(crop, dtype=np.float64)
            if drawn.std(axis=(0, 1)).max() >= FLAT:
                drawn = np.asarray(pipe(s.part(k, 1), init_image=crop, callback=callback)[0].convert("RGB"), dtype=np.float64)
                redrawn += 1
            w = (feather(tile_h, ys, row)[:, None] * feather(tile_w, xs, column)[None, :])[..., None]
            total[y:y + tile_h, x:x + tile_w] += drawn * w
            weight[y:y + tile_h, x:x + tile_w] += w
    picture = Image.fromarray(np.clip(np.round(total / weight), 0, 255).astype(np.uint8))
    how = (f"{name} to {width}x{height}, then {redrawn} of {len(xs) * len(ys)} tiles of {tile_w}x{tile_h} "
           f"(overlap {overlap}) redrawn at strength {strength:g}" + (" (the others are plain)" if redrawn < len(xs) * len(ys) else ""))
    done = f"{scale:g}x {name}, tiled img2img at {strength:g} ({redrawn} of {len(xs) * len(ys)} tiles, seed {s.seed})"
    if "Steps:" in image.info.get("parameters", ""):  # a picture noisecraft made: how it was made, and then upscaled
        picture.info["parameters"] = amend_parameters(image.info["parameters"], Size=f"{width}x{height}", Upscale=done)
    else:
        whole = dataclasses.replace(s, width=width, height=height)
        picture.info["parameters"] = parameters_text(whole, s.seed, model_name=pipe.name, model_hash=pipe.hash,
                                                     loras=pipe.loras, extra={"Upscale": done})
    return picture, how
