"""The UNet's building blocks (Rombach et al. 2022; the CompVis ``openaimodel.py`` / ``attention.py`` names):
the timestep embedding, ResBlock, down- and upsampling, cross-attention transformer blocks, and the
sequential container that hands each block what it takes. `models.unet` assembles them."""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import GroupNorm32, attention

UNET_NORM_EPS = 1e-5  # the ResBlocks' and the output's GroupNorm32
TRANSFORMER_NORM_EPS = 1e-6  # SpatialTransformer's input GroupNorm ("Normalize" in the original)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t [B] -> [B, dim], cos half first.

    Vaswani et al. 2017's positional encoding as the original ``timestep_embedding`` computes it:
    frequencies ``max_period ** (-i / half)`` for i < half, then ``[cos(t f), sin(t f)]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer (the original's ``zero_module``): residual branches start as identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """ADM residual block: GroupNorm-SiLU-conv, plus a projection of the time embedding, GroupNorm-SiLU-dropout-conv."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float, dd: dict):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(channels, UNET_NORM_EPS, **dd), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1, **dd))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels, **dd))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels, UNET_NORM_EPS, **dd), nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1, **dd)))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1, **dd)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (padding 1), named ``op`` as in the original."""

    def __init__(self, channels: int, dd: dict):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels: int, dd: dict):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class CrossAttention(nn.Module):
    """Multi-head attention of x [B, L, C] to ``context`` [B, Lc, Dc] (to x itself when context is None)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, dropout: float, dd: dict):
        super().__init__()
        inner, context_dim = heads * dim_head, context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False, **dd)
        self.to_k = nn.Linear(context_dim, inner, bias=False, **dd)
        self.to_v = nn.Linear(context_dim, inner, bias=False, **dd)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim, **dd), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, mask)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU feed-forward input (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, dim_in: int, dim_out: int, dd: dict):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * nn.functional.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float, dd: dict, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult, dd), nn.Dropout(dropout), nn.Linear(dim * mult, dim, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, cross-attention to the context, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None, dropout: float, dd: dict):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, dropout, dd)
        self.ff = FeedForward(dim, dropout, dd)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout, dd)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, **dd) for _ in range(3))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, mask if context is not None else None)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Image features [B, C, H, W] as H*W tokens through ``depth`` transformer blocks, plus a residual.

    ``proj_in``/``proj_out`` are 1x1 convs (SD 1.x) or linear layers on tokens (SD 2.x, SDXL).
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int | None,
                 use_linear: bool, dropout: float, dd: dict):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = GroupNorm32(channels, TRANSFORMER_NORM_EPS, **dd)
        if use_linear:
            self.proj_in = nn.Linear(channels, inner, **dd)
            self.proj_out = _zero(nn.Linear(inner, channels, **dd))
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1, **dd)
            self.proj_out = _zero(nn.Conv2d(inner, channels, 1, **dd))
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, dd) for _ in range(depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.norm(x)
        if not self.use_linear:
            tokens = self.proj_in(tokens)
        tokens = tokens.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear:
            tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, mask)
        if self.use_linear:
            tokens = self.proj_out(tokens)
        tokens = tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        if not self.use_linear:
            tokens = self.proj_out(tokens)
        return x + tokens


class TimestepEmbedSequential(nn.Sequential):
    """A numbered run of layers; each gets what it needs (ResBlocks the embedding, transformers the context)."""

    def forward(self, x, emb, context=None, mask=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, mask)
            else:
                x = layer(x)
        return x
