"""The ESRGAN generator (RRDBNet) in BasicSR's parameter layout: a pixel upscaler, not a diffusion model.

Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks", Sec. 3.1 and
Fig. 4: a first convolution; a trunk of Residual-in-Residual Dense Blocks (RRDB), each three
Residual Dense Blocks of five 3x3 convolutions, every convolution seeing the block's input and all
earlier outputs (concatenated, `num_grow_ch` new channels each), LeakyReLU(0.2) after the first
four, the block's output scaled by beta = 0.2 and added to its input (and the RRDB's output again
scaled by 0.2 and added to the RRDB's input); a trunk convolution whose output is added to the
first convolution's; then per 2x step a nearest-neighbour upsample, a convolution and
LeakyReLU(0.2); a high-resolution convolution with LeakyReLU(0.2) and the last convolution.
No batch normalisation anywhere (Sec. 3.1).

Real-ESRGAN (Wang et al. 2021, "Real-ESRGAN", Sec. 3.3) keeps the network and, for the x2 and x1
models, first folds the picture's pixels into channels (pixel-unshuffle by 2 or 4: 12 or 48 input
channels for RGB), so the same 4x body works at a quarter or a sixteenth of the pixels.

Names are those of BasicSR's ``RRDBNet`` (``conv_first``, ``body.N.rdbK.convM``, ``conv_body``,
``conv_upK``, ``conv_hr``, ``conv_last``), so such files load with ``load_state_dict(strict=True)``;
the older ESRGAN layout (``model.0``, ``model.1.sub.N.RDBK.convM.0``, ...) is renamed to this one
by ``checkpoints/upscaler.py``. The input is NCHW in [0, 1]; the output is not clamped.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

BETA = 0.2  # residual scaling (ESRGAN Sec. 3.1)
SLOPE = 0.2  # LeakyReLU negative slope


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1)


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions; the fifth's output, times 0.2, is added to the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        for k in range(1, 5):
            setattr(self, f"conv{k}", conv3x3(num_feat + (k - 1) * num_grow_ch, num_grow_ch))
        self.conv5 = conv3x3(num_feat + 4 * num_grow_ch, num_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for k in range(1, 5):
            features.append(F.leaky_relu(getattr(self, f"conv{k}")(torch.cat(features, 1)), SLOPE))
        return x + BETA * self.conv5(torch.cat(features, 1))


class RRDB(nn.Module):
    """Residual in Residual Dense Block: three dense blocks in a row, their output times 0.2 added to the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + BETA * self.rdb3(self.rdb2(self.rdb1(x)))


def layout(scale: int, upsamples: int | None = None) -> tuple[int, int]:
    """(pixel-unshuffle factor, number of 2x upsample steps) of a network that enlarges `scale` times.

    By default Real-ESRGAN's choice: 8x and 4x upsample 3 and 2 times; 2x and 1x unshuffle by 2 and 4
    and upsample twice. An older ESRGAN file may say otherwise (a 2x model with one upsample step,
    a 1x model with none): then `upsamples` is given and the unshuffle factor follows.
    """
    if upsamples is None:
        upsamples = max(2, int(math.log2(scale))) if scale in (1, 2, 4, 8) else -1
    unshuffle = 2 ** upsamples // scale if upsamples >= 0 else 0
    if upsamples < 0 or unshuffle not in (1, 2, 4) or unshuffle * scale != 2 ** upsamples:
        raise ValueError(f"RRDBNet cannot enlarge {scale}x with {upsamples} upsample step(s)")
    return unshuffle, upsamples


class RRDBNet(nn.Module):
    """ESRGAN's generator: `in_ch` image channels in, `out_ch` out, `scale` times larger (1, 2, 4 or 8)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32, scale: int = 4, *, upsamples: int | None = None):
        super().__init__()
        self.in_ch, self.out_ch, self.scale = in_ch, out_ch, scale
        self.unshuffle, self.upsamples = layout(scale, upsamples)
        self.conv_first = conv3x3(in_ch * self.unshuffle ** 2, num_feat)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = conv3x3(num_feat, num_feat)
        for k in range(1, self.upsamples + 1):
            setattr(self, f"conv_up{k}", conv3x3(num_feat, num_feat))
        self.conv_hr = conv3x3(num_feat, num_feat)
        self.conv_last = conv3x3(num_feat, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.unshuffle > 1:  # pad to a multiple of the factor (mirrored), fold pixels into channels
            pad_h, pad_w = -height % self.unshuffle, -width % self.unshuffle
            if pad_h or pad_w:
                mode = "reflect" if min(height, width) > self.unshuffle else "replicate"
                x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for k in range(1, self.upsamples + 1):
            feat = F.interpolate(feat, scale_factor=2, mode="nearest")
            feat = F.leaky_relu(getattr(self, f"conv_up{k}")(feat), SLOPE)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), SLOPE))
        return out[..., : height * self.scale, : width * self.scale]


def rrdbnet_config(state_dict: dict[str, torch.Tensor]) -> dict:
    """The `RRDBNet` arguments that a BasicSR-layout state dict was made with (sizes read from its tensors).

    Raises KeyError or ValueError where the tensors are not an RRDBNet's.
    """
    first, last = state_dict["conv_first.weight"], state_dict["conv_last.weight"]
    num_feat, first_in, out_ch = first.shape[0], first.shape[1], last.shape[0]
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"body\.(\d+)\.", k))}
    upsamples = sum(1 for k in state_dict if re.fullmatch(r"conv_up\d+\.weight", k))
    unshuffle = next((f for f in (4, 2) if first_in == out_ch * f * f), 1)
    if blocks != set(range(len(blocks))) or not blocks or 2 ** upsamples % unshuffle:
        raise ValueError("these tensors are not an RRDBNet's (blocks or upsample layers do not add up)")
    return {"in_ch": first_in // unshuffle ** 2, "out_ch": out_ch, "num_feat": num_feat, "num_block": len(blocks),
            "num_grow_ch": state_dict["body.0.rdb1.conv1.weight"].shape[0], "scale": 2 ** upsamples // unshuffle,
            "upsamples": upsamples}
