"""ControlNet at sampling time: keep the shape of a real photo.

    net = load_controlnet("control_v11p_sd15_canny.safetensors", pipe.device, pipe.dtype)
    pipe("a red storefront", controls=[Control(net, photo, "canny", strength=0.8)])

A control picture is prepared by a preprocessor that needs no downloaded weights: ``canny`` (OpenCV's edge
detector, A1111's default thresholds 100/200), ``tile`` (the picture itself, for upscaling), or ``none`` /
``depth`` / ``lineart`` / ``scribble`` / ``pose`` / ``softedge`` / ``seg`` for a map the user made (used as
it is). Each ControlNet's residuals are scaled by its strength and added only on the steps inside its
[start, end] fraction of the schedule (diffusers' ``control_guidance_start`` / ``_end``); several stack.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import UserError

GIVEN = ("none", "depth", "lineart", "scribble", "pose", "softedge", "seg", "normal")
PREPROCESSORS = ("canny", "tile", *GIVEN)
RESIZES = ("just", "crop", "fill")


@dataclass
class Control:
    net: object  # a `checkpoints.controlnet.LoadedControlNet`
    image: Image.Image
    preprocessor: str = "none"
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    low: int = 100  # canny thresholds
    high: int = 200
    resize: str = "just"  # to the output size: "just" (stretch, as diffusers), "crop" (cover, centred), "fill" (fit, black bars)

    def check(self) -> None:
        if self.preprocessor not in PREPROCESSORS:
            raise UserError(f"unknown control preprocessor {self.preprocessor!r}; choose one of: {', '.join(PREPROCESSORS)}")
        if not (0.0 <= self.strength <= 2.0):
            raise UserError(f"control strength must be from 0 to 2, not {self.strength:g}")
        if not (0.0 <= self.start < self.end <= 1.0):
            raise UserError(f"control start and end must be fractions with start < end, not {self.start:g} and {self.end:g}")
        if not (0 <= self.low <= self.high <= 255):
            raise UserError("canny thresholds must be 0 <= low <= high <= 255")
        if self.resize not in RESIZES:
            raise UserError(f"control resize must be one of {', '.join(RESIZES)}, not {self.resize!r}")

    @property
    def label(self) -> str:
        """The A1111 ControlNet extension's parameters entry for this control."""
        return (f"Module: {self.preprocessor}, Model: {self.net.title}, Weight: {self.strength:g}, "
                f"Guidance Start: {self.start:g}, Guidance End: {self.end:g}")  # quoted by format_parameters


def parse_control_argument(text: str) -> tuple[str, str, float, float, float]:
    """``KIND:PICTURE[:STRENGTH[:START:END]]`` (the CLI's --control) -> (kind, picture path, strength, start, end)."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise UserError(f"--control takes KIND:PICTURE[:STRENGTH[:START:END]] (kind: {', '.join(PREPROCESSORS)}), not {text!r}")
    parts, numbers = rest.split(":"), []
    while len(parts) > 1 and len(numbers) < 3:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    if len(numbers) == 2:
        raise UserError(f"--control {text!r}: after the picture give STRENGTH, or STRENGTH:START:END")
    strength, start, end = numbers if len(numbers) == 3 else (numbers or [1.0]) + [0.0, 1.0]
    return kind.strip().lower(), ":".join(parts), strength, start, end


def preprocess(image: Image.Image, kind: str, low: int = 100, high: int = 200) -> Image.Image:
    """The control picture the ControlNet reads (RGB)."""
    rgb = image.convert("RGB")
    if kind != "canny":
        return rgb
    import cv2

    edges = cv2.Canny(np.asarray(rgb.convert("L")), low, high)
    return Image.fromarray(edges).convert("RGB")


def fitted(picture: Image.Image, width: int, height: int, resize: str = "just") -> Image.Image:
    """The control picture at the output size: stretched, cropped to cover (A1111's "Crop and Resize") or fitted
    inside with black bars ("Resize and Fill"); Lanczos, as diffusers' control image processor."""
    from PIL import ImageOps

    if picture.size == (width, height):
        return picture
    if resize == "crop":
        return ImageOps.fit(picture, (width, height), Image.Resampling.LANCZOS)
    if resize == "fill":
        return ImageOps.pad(picture, (width, height), Image.Resampling.LANCZOS, color=(0, 0, 0))
    return picture.resize((width, height), Image.Resampling.LANCZOS)


def hint_tensor(picture: Image.Image, width: int, height: int, device, dtype, resize: str = "just") -> torch.Tensor:
    """[1, 3, H, W] in [0, 1] at the output size."""
    picture = fitted(picture, width, height, resize)
    array = np.asarray(picture, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].to(device, dtype)


class ControlledNet(nn.Module):
    """The UNet with ControlNets' residuals added: what the denoiser calls while controls are on. `step` is
    the sampling step being evaluated (the sampler's callback advances it)."""

    def __init__(self, unet: nn.Module, controls: list[tuple[nn.Module, torch.Tensor, float, float, float]], steps: int):
        super().__init__()
        self.unet, self.controls, self.steps, self.step = unet, controls, max(1, steps), 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        down, mid = None, None
        for module, hint, strength, start, end in self.controls:
            if self.step / self.steps < start or (self.step + 1) / self.steps > end:
                continue  # outside its part of the schedule
            hint = hint.expand(x.shape[0], -1, -1, -1)
            d, m = module(x, hint, t, cond.get("context"), cond.get("y"), cond.get("context_mask"))
            d, m = [r * strength for r in d], m * strength
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return self.unet(x, t, **cond, control=None if down is None else (down, mid))


@contextmanager
def controlled(denoiser, unet: nn.Module, controls: list[tuple] | None, steps: int, callback):
    """While sampling with `controls` (from `prepare`): the denoiser's network is the `ControlledNet`; yields
    the callback to give the sampler (it also advances the network's step). Without controls: as it was."""
    if not controls:
        yield callback
        return
    net = ControlledNet(unet, controls, steps)

    def counting(step, total, x0):
        net.step = step
        if callback is not None:
            callback(step, total, x0)

    denoiser.net = net
    try:
        yield counting
    finally:
        denoiser.net = unet


def prepare(controls: list[Control] | None, pipe, width: int, height: int) -> tuple[list[tuple] | None, dict]:
    """Each control checked against the pipeline (its family, its sizes) and its picture made ready, and the
    PNG parameters entries that name them."""
    if not controls:
        return None, {}
    if pipe.inpainting_model:
        raise UserError("ControlNets are for ordinary models; this is an inpainting model")
    prepared = []
    f = pipe.config.downsample_factor
    for control in controls:
        control.check()
        net = control.net
        module = net.module
        if net.family != pipe.family or module.config.context_dim != pipe.config.unet.context_dim or \
                module.config.model_channels != pipe.config.unet.model_channels:
            raise UserError(f"ControlNet {net.name} is for {net.family.upper()} models; this model is {pipe.family}")
        if module.downsampling != f:
            raise UserError(f"ControlNet {net.name} reads control pictures at {module.downsampling}x the latents' size; "
                            f"this model's latents are 1/{f} of the picture")
        picture = preprocess(fitted(control.image, width, height, control.resize), control.preprocessor, control.low, control.high)
        hint = hint_tensor(picture, width, height, pipe.device, pipe.dtype)
        prepared.append((module, hint, control.strength, control.start, control.end))
    return prepared, {f"ControlNet {k}": c.label for k, c in enumerate(controls)}


__all__ = ["Control", "ControlledNet", "controlled", "PREPROCESSORS", "hint_tensor", "parse_control_argument", "prepare", "preprocess"]
