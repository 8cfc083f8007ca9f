"""Pieces shared by the UNet and the autoencoder: float32 group norm and multi-head attention.

Both networks of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models") normalise with GroupNorm over 32 groups (Wu & He 2018) and attend
with scaled dot-product attention (Vaswani et al. 2017). All attention goes through
`torch.nn.functional.scaled_dot_product_attention`, which picks a fused kernel where one exists.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 and cast back, as the original ``GroupNorm32`` does.

    Half-precision statistics over large groups lose too many digits; computing them in
    float32 keeps bf16/fp16 inference close to float32. Parameter names are nn.GroupNorm's.
    """

    def __init__(self, channels: int, eps: float, *, dtype=None, device=None):
        super().__init__(32, channels, eps=eps, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 or x.dtype == torch.float64:
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention of token sequences: q [B, Lq, H*d], k and v [B, Lk, H*d] -> [B, Lq, H*d].

    ``mask`` [B, Lk] bool (or 0/1), True where a key may be attended to. A sample whose mask is all False
    (nothing to attend to) gets a zero output instead of the NaNs a fully masked softmax makes.
    """
    b, lq, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    attn_mask = None
    if mask is not None:
        mask = mask.to(torch.bool)
        keep = mask.any(dim=-1)  # [B]
        attn_mask = (mask | ~keep[:, None])[:, None, None, :]  # [B, 1, 1, Lk]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    if mask is not None:
        out = out * keep[:, None, None, None].to(out.dtype)
    return out.transpose(1, 2).reshape(b, lq, inner)
