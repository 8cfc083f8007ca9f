"""The patch-GAN discriminator used to sharpen autoencoders (off by default; its losses are in `train.losses`).

PatchGAN: Isola et al. 2017 ("Image-to-Image Translation with Conditional Adversarial Networks"),
as LDM trains its autoencoders (Esser et al. 2021, "Taming Transformers", Sec. 3.2; Rombach et al.
2022, App. G): a few strided convolutions that score overlapping patches as real or fake, a hinge
loss, and the generator term weighted adaptively by the ratio of gradient norms at the decoder's
last layer (Esser et al. 2021, eq. 7). GroupNorm replaces BatchNorm so that small and distributed
batches behave the same.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Logits [B, 1, h, w], one per overlapping patch; `layers` stride-2 stages after the first."""

    def __init__(self, in_channels: int = 3, ch: int = 64, layers: int = 2):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = ch
        for n in range(1, layers + 1):
            out = ch * min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.GroupNorm(32, out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.main = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)
