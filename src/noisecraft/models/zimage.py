"""Z-Image's single-stream DiT (Tongyi-MAI / Alibaba 2025, "Z-Image: An Efficient Image Generation Foundation
Model with Single-Stream Diffusion Transformer"; Z-Image-Turbo, 6B, Apache-2.0), with the original checkpoint
names, so a single file's tensors load with ``load_state_dict(strict=True)``.

Image patches and the prompt's Qwen3 token states are first refined apart (``noise_refiner``: modulated by the
timestep; ``context_refiner``: not), then run as one sequence [image | prompt] through the main ``layers``. Every
block is pre- and post-normed with RMS norms, attends with RMS-normed q/k and 3-axis RoPE (axis 0 counts prompt
tokens, then the image sits one further; axes 1 and 2 are the patch row and column), and feeds a SwiGLU MLP;
modulated blocks scale by 1 + s and gate by tanh(g). Sequences are padded to multiples of 32 with learned pad
tokens (``x_pad_token``, ``cap_pad_token``)::

    x_embedder              2x2 patches (row, column, channel order) -> dim
    t_embedder.mlp.{0,2}    256 sinusoids of 1000 (1 - sigma) -> 1024 -> 256 (the modulation input)
    cap_embedder.{0,1}      RMS norm, then Qwen3's width -> dim
    {noise_refiner,context_refiner,layers}.{i}.{attention.{qkv,out,q_norm,k_norm}, feed_forward.{w1,w2,w3},
        attention_norm{1,2}, ffn_norm{1,2}, adaLN_modulation.0}
    final_layer.{linear, adaLN_modulation.1}

The network's own output is the negative of the flow's velocity at time 1 - sigma; `forward` returns the
velocity at sigma (t = 1000 sigma), as every flow model here does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import JSONConfig
from .flux import apply_rope, rope
from .mmdit import RMSNorm, timestep_sinusoids

PAD_TO = 32  # sequences are padded to multiples of this
MOD_DIM = 256


@dataclass(frozen=True)
class ZImageConfig(JSONConfig):
    in_channels: int = 16
    hidden: int = 3840
    heads: int = 30
    depth: int = 30
    refiner_depth: int = 2
    context_dim: int = 2560  # Qwen3-4B's width
    axes_dim: tuple[int, ...] = (32, 48, 48)
    theta: float = 256.0
    eps: float = 1e-5

    def __post_init__(self):
        if isinstance(self.axes_dim, list):
            object.__setattr__(self, "axes_dim", tuple(self.axes_dim))

    @property
    def out_channels(self) -> int:
        return self.in_channels


class Attention(nn.Module):
    def __init__(self, c: ZImageConfig, **dd):
        super().__init__()
        self.heads = c.heads
        head = c.hidden // c.heads
        self.qkv = nn.Linear(c.hidden, 3 * c.hidden, bias=False, **dd)
        self.out = nn.Linear(c.hidden, c.hidden, bias=False, **dd)
        self.q_norm, self.k_norm = RMSNorm(head, eps=1e-5, **dd), RMSNorm(head, eps=1e-5, **dd)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(self.q_norm(q), rotations[:, None]), apply_rope(self.k_norm(k), rotations[:, None])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])
        return self.out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x), 8/3 as wide as the block."""

    def __init__(self, dim: int, **dd):
        super().__init__()
        inner = int(dim / 3 * 8)
        self.w1, self.w3 = nn.Linear(dim, inner, bias=False, **dd), nn.Linear(dim, inner, bias=False, **dd)
        self.w2 = nn.Linear(inner, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: ZImageConfig, modulated: bool, **dd):
        super().__init__()
        self.attention, self.feed_forward = Attention(c, **dd), FeedForward(c.hidden, **dd)
        self.attention_norm1, self.attention_norm2 = RMSNorm(c.hidden, eps=c.eps, **dd), RMSNorm(c.hidden, eps=c.eps, **dd)
        self.ffn_norm1, self.ffn_norm2 = RMSNorm(c.hidden, eps=c.eps, **dd), RMSNorm(c.hidden, eps=c.eps, **dd)
        if modulated:
            self.adaLN_modulation = nn.Sequential(nn.Linear(min(c.hidden, MOD_DIM), 4 * c.hidden, **dd))

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, mask: torch.Tensor | None, t: torch.Tensor | None = None):
        if t is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), rotations, mask))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_a, gate_a, scale_f, gate_f = self.adaLN_modulation(t)[:, None].chunk(4, dim=-1)
        x = x + gate_a.tanh() * self.attention_norm2(self.attention(self.attention_norm1(x) * (1 + scale_a), rotations, mask))
        return x + gate_f.tanh() * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * (1 + scale_f)))


def _padded(n: int) -> int:
    return n + (-n) % PAD_TO


class ZImage(nn.Module):
    """``forward(x, t, context, context_mask)``: the velocity for latents x [B, C, H, W] at t [B] (1000 sigma), given
    the prompt's Qwen3 states `context` [B, L, context_dim] of which `context_mask` [B, L] marks the real tokens."""

    def __init__(self, config: ZImageConfig, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        c, dd = config, dict(dtype=dtype, device=device)
        self.config = c
        self.x_embedder = nn.Linear(4 * c.in_channels, c.hidden, **dd)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, 1024, **dd), nn.SiLU(), nn.Linear(1024, min(c.hidden, MOD_DIM), **dd))
        self.cap_embedder = nn.Sequential(RMSNorm(c.context_dim, eps=c.eps, **dd), nn.Linear(c.context_dim, c.hidden, **dd))
        self.x_pad_token = nn.Parameter(torch.empty(1, c.hidden, **dd))
        self.cap_pad_token = nn.Parameter(torch.empty(1, c.hidden, **dd))
        self.noise_refiner = nn.ModuleList(Block(c, True, **dd) for _ in range(c.refiner_depth))
        self.context_refiner = nn.ModuleList(Block(c, False, **dd) for _ in range(c.refiner_depth))
        self.layers = nn.ModuleList(Block(c, True, **dd) for _ in range(c.depth))
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(c.hidden, 4 * c.in_channels, **dd)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(min(c.hidden, MOD_DIM), c.hidden, **dd))

    def blocks(self) -> list[nn.Module]:
        """The parts that run one after another (what sequential offloading moves to the GPU in turn)."""
        return [*self.noise_refiner, *self.context_refiner, *self.layers]

    def _rotations(self, ids: torch.Tensor) -> torch.Tensor:
        """RoPE as Z-Image computes it (float32 angles), in `flux.rope`'s [L, D/2, 2, 2] rotation form."""
        return rope(ids, self.config.axes_dim, self.config.theta, float32_angles=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None):
        dtype = self.x_embedder.weight.dtype
        b, ch, height, width = x.shape
        h, w = height // 2, width // 2
        n, nx = h * w, _padded(h * w)
        t = torch.as_tensor(t, device=x.device).expand(b)
        mod = self.t_embedder.mlp(timestep_sinusoids(1000 - t.float()).to(dtype))  # the network's time is 1 - sigma
        patches = x.to(dtype).reshape(b, ch, h, 2, w, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, n, 4 * ch)
        img = torch.cat([self.x_embedder(patches), self.x_pad_token.to(dtype).expand(b, nx - n, -1)], dim=1)
        lengths = context_mask.sum(1).tolist() if context_mask is not None else [context.shape[1]] * b
        padded = [_padded(int(n_i)) for n_i in lengths]
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        rotations = {}  # per padded prompt length: (the image's, the prompt's); a batch has few distinct ones
        for p in set(padded):
            grid = torch.stack([torch.full_like(rows, p + 1), rows, cols], dim=-1).reshape(-1, 3)
            ids = torch.zeros(p, 3, dtype=torch.long)
            ids[:, 0] = torch.arange(1, p + 1)
            rotations[p] = (self._rotations(torch.cat([grid, torch.zeros(nx - n, 3, dtype=grid.dtype)]).to(x.device)),
                            self._rotations(ids.to(x.device)))
        img_rot, cap_rot = [rotations[p][0] for p in padded], [rotations[p][1] for p in padded]
        cap = [torch.cat([self.cap_embedder(context[i, :lengths[i]].to(dtype)),
                          self.cap_pad_token.to(dtype).expand(padded[i] - lengths[i], -1)]) for i in range(b)]
        img_rot = torch.stack(img_rot)
        for block in self.noise_refiner:
            img = block(img, img_rot, None, mod)
        cap_x, cap_r, cap_mask = _batch(cap), _batch(cap_rot), _mask(padded, x.device)
        for block in self.context_refiner:
            cap_x = block(cap_x, cap_r, cap_mask)
        seq = _batch([torch.cat([img[i], cap_x[i, :padded[i]]]) for i in range(b)])
        rot = _batch([torch.cat([img_rot[i], cap_r[i, :padded[i]]]) for i in range(b)])
        mask = _mask([nx + p for p in padded], x.device)
        for block in self.layers:
            seq = block(seq, rot, mask, mod)
        scale = 1 + self.final_layer.adaLN_modulation(mod)[:, None]
        out = self.final_layer.linear(self.final_layer.norm_final(seq[:, :n]) * scale)
        out = out.reshape(b, h, w, 2, 2, ch).permute(0, 5, 1, 3, 2, 4).reshape(b, ch, height, width)
        return -out.to(x.dtype)


def _batch(rows: list[torch.Tensor]) -> torch.Tensor:
    """Sequences of different lengths, zero-padded at the end to one batch."""
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


def _mask(lengths: list[int], device) -> torch.Tensor | None:
    """Which positions are real (None when all are)."""
    if len(set(lengths)) == 1:
        return None
    return torch.arange(max(lengths), device=device)[None] < torch.tensor(lengths, device=device)[:, None]


__all__ = ["ZImage", "ZImageConfig"]
