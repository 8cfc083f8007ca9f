"""ESRGAN-family upscaler files (``--upscaler FILE``): RealESRGAN_x4plus.pth, 4x-UltraSharp.pth, ESRGAN_4x.pth, ...

    up = load_upscaler("RealESRGAN_x4plus.pth")      # a PixelUpscaler
    big = up(picture)                                 # up.scale times wider and taller, in tiles

The file is read like every model file (``io.py``: sniffed by content, a bounded safetensors header,
``torch.load(weights_only=True)`` for .pth pickles, so no code in it ever runs). Real-ESRGAN's
``params_ema`` / ``params`` wrappers are unwrapped. When `spandrel` imports (it needs torchvision),
it builds whatever architecture it knows; otherwise noisecraft's own RRDBNet (``models/rrdbnet.py``)
takes BasicSR-layout files as they are and old ESRGAN-layout files renamed by `LAYOUT_RULES`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..devices import pick_device
from ..errors import ModelFileError, UserError
from ..models.rrdbnet import RRDBNet, rrdbnet_config
from .io import check_finite, load_weights

MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # picture mode for a network's input channels
# The old ESRGAN layout (a Sequential) beside BasicSR's: one rule per tensor group, used both ways.
# {b} block, {r} dense block, {c} convolution, {p} weight|bias; NB = number of blocks, U = upsample steps.
LAYOUT_RULES = [
    ("model.0.{p}", "conv_first.{p}"),
    ("model.1.sub.{b}.RDB{r}.conv{c}.0.{p}", "body.{b}.rdb{r}.conv{c}.{p}"),
    ("model.1.sub.{NB}.{p}", "conv_body.{p}"),
    ("model.{3k}.{p}", "conv_up{k}.{p}"),  # k = 1 .. U
    ("model.{3U+2}.{p}", "conv_hr.{p}"),
    ("model.{3U+4}.{p}", "conv_last.{p}"),
]
# Older BasicSR / BSRGAN names of the same tensors (read only, renamed to BasicSR's).
ALIASES = [
    ("RRDB_trunk.{b}.RDB{r}.conv{c}.{p}", "body.{b}.rdb{r}.conv{c}.{p}"),
    ("trunk_conv.{p}", "conv_body.{p}"),
    ("upconv{k}.{p}", "conv_up{k}.{p}"),
    ("HRconv.{p}", "conv_hr.{p}"),
]
_FIELDS = {"b": r"\d+", "r": r"[1-3]", "c": r"[1-5]", "k": r"\d+", "p": r"weight|bias"}


def _rules(num_block: int, upsamples: int) -> list[tuple[str, str]]:
    """LAYOUT_RULES with NB, U and each k filled in (then every name is a pattern of {b} {r} {c} {p} only)."""
    rules = []
    for old, new in LAYOUT_RULES:
        if "{3k}" in old:
            rules += [(old.replace("{3k}", str(3 * k)), new.replace("{k}", str(k))) for k in range(1, upsamples + 1)]
        else:
            rules.append((old.replace("{NB}", str(num_block)).replace("{3U+2}", str(3 * upsamples + 2))
                          .replace("{3U+4}", str(3 * upsamples + 4)), new))
    return rules


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for i, p in enumerate(parts)))


def rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """`state` with each name renamed by the first rule whose first pattern it matches (to the second).

    Raises ValueError naming the first tensor no rule matches."""
    compiled = [(_pattern(source), target) for source, target in rules]
    out = {}
    for name, tensor in state.items():
        for pattern, target in compiled:
            if match := pattern.fullmatch(name):
                out[target.format(**match.groupdict())] = tensor
                break
        else:
            raise ValueError(f"unknown tensor {name!r}")
    return out


def _count(state: dict[str, torch.Tensor], block: str, layer: str) -> tuple[int, int]:
    """(distinct block numbers matched by `block`'s group, names matching `layer`)."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(block, k))}
    return len(blocks), sum(1 for k in state if re.fullmatch(layer, k))


def to_new_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ESRGAN-family state dict in BasicSR's layout (old ESRGAN and older BasicSR names renamed).

    Raises ValueError naming a tensor no rule knows."""
    if "model.0.weight" in state:  # old layout: model.0, model.1.sub.*, then U upsample convs, conv_hr, conv_last
        num_block, convs = _count(state, r"model\.1\.sub\.(\d+)\.RDB", r"model\.\d+\.weight")
        return rename(state, _rules(num_block, convs - 3))
    return rename(state, [(new, new) for _, new in LAYOUT_RULES] + ALIASES)


def to_old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BasicSR-layout RRDBNet state dict in the old ESRGAN layout (the same rules read backwards)."""
    num_block, upsamples = _count(state, r"body\.(\d+)\.", r"conv_up\d+\.weight")
    return rename(state, [(new, old) for old, new in _rules(num_block, upsamples)])


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscaler file: safetensors, or a weights-only .pth (``params_ema``/``params`` unwrapped)."""
    data, _ = load_weights(path)
    for wrapper in ("params_ema", "params", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    tensors = {k: v for k, v in data.items() if torch.is_tensor(v)} if isinstance(data, dict) else {}
    if not tensors:
        raise ModelFileError(f"{path} holds no state dict of weights, so it is not an upscaler file")
    check_finite(tensors, path)
    return tensors


class PixelUpscaler:
    """A loaded upscaler network: call it on a picture to get one `scale` times wider and taller.

    `net` maps an NCHW batch in [0, 1] to one `scale` times larger; `channels` is what it reads (1, 3
    or 4); tiles start on multiples of `align` (pixel-unshuffle groups pixels in 2x2 or 4x4 blocks).
    """

    def __init__(self, net, name: str, scale: int, architecture: str, channels: int = 3, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, align: int = 4):
        self.net, self.name, self.scale, self.architecture = net, name, int(scale), architecture
        self.channels, self.device, self.dtype, self.align = channels, torch.device(device), dtype, align

    def __repr__(self) -> str:
        return f"PixelUpscaler({self.name!r}, {self.architecture}, {self.scale}x)"

    def __call__(self, image: Image.Image, tile: int = 256, overlap: int = 16) -> Image.Image:
        """`image` enlarged `scale` times, as RGB, computed in tiles of `tile` pixels (0: all at once).

        Each tile runs with `overlap` pixels of its neighbours around it and keeps only its own part
        of the result (cropped seams), so a big picture fits in memory and no grid shows, as far as
        the network looks no further than `overlap` pixels."""
        if tile < 0 or overlap < 0:
            raise UserError(f"the upscaler's tile ({tile}) and overlap ({overlap}) must not be negative")
        height, width, s = image.height, image.width, self.scale
        pixels = np.asarray(image.convert(MODES[self.channels]), dtype=np.float32).reshape(height, width, -1)
        x = torch.from_numpy(pixels / 255.0).permute(2, 0, 1)[None]
        step = _round_up(tile, self.align) if tile else max(height, width)
        margin = _round_up(overlap, self.align)
        out = None
        with torch.inference_mode():
            for top in range(0, height, step):
                for left in range(0, width, step):
                    bottom, right = min(height, top + step), min(width, left + step)
                    y0, x0 = max(0, top - margin), max(0, left - margin)
                    piece = x[..., y0:min(height, bottom + margin), x0:min(width, right + margin)]
                    result = self.net(piece.to(self.device, self.dtype)).float().clamp(0, 1)
                    core = result[0, :, (top - y0) * s:(bottom - y0) * s, (left - x0) * s:(right - x0) * s]
                    block = (core * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                    if out is None:
                        out = np.empty((height * s, width * s, block.shape[2]), dtype=np.uint8)
                    out[top * s:bottom * s, left * s:right * s] = block
        return Image.fromarray(out[..., 0] if out.shape[2] == 1 else out).convert("RGB")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _spandrel():
    """The spandrel module, or None where it is missing or cannot import (it needs torchvision)."""
    try:
        import spandrel
    except Exception:  # ImportError, or a torchvision that does not fit this torch: noisecraft's own RRDBNet serves
        return None
    return spandrel


def _from_spandrel(spandrel, state: dict[str, torch.Tensor], path: Path, device: torch.device) -> PixelUpscaler | None:
    """The upscaler spandrel builds from `state`, or None where it knows no such picture-to-picture network."""
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state)
    except Exception:  # spandrel's UnsupportedModelError, or a detection that tripped over odd tensors
        return None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels not in MODES \
            or descriptor.output_channels not in MODES:
        return None
    dtype = torch.float16 if device.type == "cuda" and descriptor.supports_half else torch.float32
    descriptor.to(device, dtype).eval()
    return PixelUpscaler(descriptor, path.stem, descriptor.scale, descriptor.architecture.name,
                         descriptor.input_channels, device=device, dtype=dtype,
                         align=math.lcm(4, descriptor.size_requirements.multiple_of))


def _from_rrdbnet(state: dict[str, torch.Tensor], path: Path, device: torch.device, spandrel: bool) -> PixelUpscaler:
    """noisecraft's RRDBNet with `state`'s weights; one sentence of UserError where they are not an RRDBNet's."""
    if spandrel:
        not_ours = UserError(f"{path} is not an upscaler that spandrel or noisecraft knows", field="upscaler")
    else:
        not_ours = UserError(f"{path} is not an ESRGAN-family upscaler (RRDBNet); install spandrel (it needs "
                             "torchvision) for other architectures", field="upscaler")
    try:
        state = to_new_layout(state)
        config = rrdbnet_config(state)
        net = RRDBNet(**config)
        net.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError, IndexError):
        raise not_ours from None
    if config["in_ch"] not in MODES or config["out_ch"] not in MODES:
        raise not_ours
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    net.to(device, dtype).eval()
    return PixelUpscaler(net, path.stem, config["scale"], "ESRGAN", config["in_ch"], device=device, dtype=dtype)


def load_upscaler(path: str | Path, device: str | torch.device = "cpu") -> PixelUpscaler:
    """The upscaler in a .pth or .safetensors file, on `device` (cpu, cuda, mps or auto).

    spandrel builds it where spandrel imports; noisecraft's RRDBNet otherwise (or where spandrel declines)."""
    path = Path(path).expanduser()
    state = read_state_dict(path)
    device = pick_device(device)
    spandrel = _spandrel()
    found = _from_spandrel(spandrel, state, path, device) if spandrel is not None else None
    return found or _from_rrdbnet(state, path, device, spandrel is not None)
