"""ControlNet (Zhang, Rao and Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion Models"):
a trainable copy of the UNet's encoder that reads a control picture (edges, depth, a pose, a tile) and adds
its zero-initialised outputs to the UNet's skips and middle block.

Layout, in the original (``cldm``) names, so a ControlNet file's ``control_model.*`` tensors load with
``load_state_dict(strict=True)`` once that prefix is stripped::

    time_embed, label_emb, input_blocks.*, middle_block    the UNet encoder's (models.unet.build_encoder)
    input_hint_block.{0,2,...,2k+2}                        the control picture -> model_channels at the latents' size:
                                                           conv, then per width a conv and a stride-2 conv, SiLU
                                                           between, and a zero conv last (SD: 16, 32, 96, 256: /8)
    zero_convs.{i}.0                                       1x1 conv per input block (its residual)
    middle_block_out.0                                     1x1 conv of the middle block (its residual)
"""

from __future__ import annotations

import torch
from torch import nn

from .unet import UNetConfig, build_encoder, embed, run_block

SD_EMBEDDING = (16, 32, 96, 256)


class ControlNet(nn.Module):
    """``forward(x, hint, t, context, y, context_mask)`` -> (residuals per input block, middle residual)."""

    def __init__(self, config: UNetConfig, hint_channels: int = 3, embedding: tuple[int, ...] = SD_EMBEDDING,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        dd = dict(dtype=dtype, device=device)
        self.config, self.hint_channels, self.embedding = config, hint_channels, tuple(embedding)
        skip_channels, ch, _ = build_encoder(self, config, dd)
        layers = [nn.Conv2d(hint_channels, embedding[0], 3, padding=1, **dd), nn.SiLU()]
        for width, wider in zip(embedding, embedding[1:]):
            layers += [nn.Conv2d(width, width, 3, padding=1, **dd), nn.SiLU(),
                       nn.Conv2d(width, wider, 3, padding=1, stride=2, **dd), nn.SiLU()]
        layers.append(nn.Conv2d(embedding[-1], config.model_channels, 3, padding=1, **dd))
        self.input_hint_block = nn.Sequential(*layers)
        self.zero_convs = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 1, **dd)) for c in skip_channels)
        self.middle_block_out = nn.Sequential(nn.Conv2d(ch, ch, 1, **dd))
        for conv in (self.input_hint_block[-1], *(z[0] for z in self.zero_convs), self.middle_block_out[0]):
            nn.init.zeros_(conv.weight)  # an untrained ControlNet changes nothing
            nn.init.zeros_(conv.bias)

    @property
    def downsampling(self) -> int:
        """How much smaller than the control picture the latents are (8 for Stable Diffusion)."""
        return 2 ** (len(self.embedding) - 1)

    def forward(self, x: torch.Tensor, hint: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        c = self.config
        emb = embed(self, c, x, t, y)
        dtype = emb.dtype
        if context is not None:
            context = context.to(dtype)
        h = run_block(self, self.input_blocks[0], x.to(dtype), emb, context, context_mask)
        h = h + self.input_hint_block(hint.to(dtype))
        down = [self.zero_convs[0](h)]
        for block, zero in zip(self.input_blocks[1:], self.zero_convs[1:]):
            h = run_block(self, block, h, emb, context, context_mask)
            down.append(zero(h))
        h = run_block(self, self.middle_block, h, emb, context, context_mask)
        return down, self.middle_block_out(h)
