"""The MMDiT of Stable Diffusion 3 / 3.5 (Esser et al. 2024, "Scaling Rectified Flow Transformers for
High-Resolution Image Synthesis"), with the original (Stability ``mmditx.py``) parameter names, so a single
file's ``model.diffusion_model.*`` tensors load with ``load_state_dict(strict=True)``.

Two streams, the image patches and the text tokens, each with its own weights, attend jointly (one softmax
over both sequences); every sub-layer is modulated by adaLN-Zero from the timestep + pooled-text vector.
SD 3.5 adds RMS norms of queries and keys (``ln_q``/``ln_k``), and 3.5 Medium's MMDiT-X an extra image-only
self-attention (``attn2``) in its first blocks. The last block's text stream is "pre-only": it feeds the
joint attention and stops (no output projection, no MLP)::

    x_embedder.proj          patchify: p x p conv, in_channels -> hidden
    pos_embed                [1, max^2, hidden] 2-D sin-cos, cropped to the centre for each picture size
    t_embedder.mlp.{0,2}     256 sinusoids of the timestep -> hidden;   y_embedder.mlp.{0,2} pooled text -> hidden
    context_embedder         text tokens (T5 width) -> hidden
    joint_blocks.{i}.{context_block,x_block}.{adaLN_modulation.1, attn.qkv, attn.ln_q, attn.ln_k, attn.proj,
                                              attn2.*, mlp.fc1, mlp.fc2}
    final_layer.{adaLN_modulation.1, linear}   modulated LayerNorm, then patches of out_channels
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config import JSONConfig


@dataclass(frozen=True)
class MMDiTConfig(JSONConfig):
    in_channels: int = 16
    out_channels: int = 16
    patch_size: int = 2
    depth: int = 24  # joint blocks
    hidden: int = 1536  # SD3: 64 * depth
    heads: int = 24
    context_dim: int = 4096  # T5-XXL's width
    pooled_dim: int = 2048  # CLIP-L + bigG pooled
    pos_embed_max_size: int = 192
    qk_norm: bool = False  # SD 3.5: RMS norms of q and k
    dual_attention_layers: tuple[int, ...] = ()  # SD 3.5 Medium (MMDiT-X): blocks with an image-only attn2
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if isinstance(self.dual_attention_layers, list):
            object.__setattr__(self, "dual_attention_layers", tuple(self.dual_attention_layers))


def timestep_sinusoids(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """DiT's timestep features: [cos, sin] of t at frequencies exp(-ln(max_period) k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(size: int, dim: int) -> torch.Tensor:
    """[1, size^2, dim] fixed 2-D sine-cosine positions (MAE's), rows then columns."""
    def one_axis(positions: torch.Tensor, width: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))
        out = positions.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    grid = torch.arange(size, dtype=torch.float64)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    return torch.cat([one_axis(cols, dim // 2), one_axis(rows, dim // 2)], dim=1).float()[None]


def _mlp(inner: int, outer: int, **dd) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inner, outer, **dd), nn.SiLU(), nn.Linear(outer, outer, **dd))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / rms(x) * weight over the last dimension, the statistics in float32."""
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, **dd):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class SelfAttention(nn.Module):
    """qkv in one projection; optional RMS norms of q and k per head; `proj` out (absent when pre-only)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, pre_only: bool = False, **dd):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, **dd)
        if qk_norm:
            self.ln_q, self.ln_k = RMSNorm(dim // heads, **dd), RMSNorm(dim // heads, **dd)
        if not pre_only:
            self.proj = nn.Linear(dim, dim, **dd)

    def qkv_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if hasattr(self, "ln_q"):
            b, n, d = q.shape
            q = self.ln_q(q.reshape(b, n, self.heads, -1)).reshape(b, n, d)
            k = self.ln_k(k.reshape(b, n, self.heads, -1)).reshape(b, n, d)
        return q, k, v


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DismantledBlock(nn.Module):
    """One stream of a joint block: its adaLN-Zero modulation, its half of the joint attention, its MLP."""

    def __init__(self, c: MMDiTConfig, pre_only: bool = False, dual: bool = False, **dd):
        super().__init__()
        h = c.hidden
        self.pre_only, self.dual = pre_only, dual
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(h, c.heads, c.qk_norm, pre_only, **dd)
        if dual:
            self.attn2 = SelfAttention(h, c.heads, c.qk_norm, **dd)
        if not pre_only:
            self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
            self.mlp = nn.Module()
            self.mlp.fc1, self.mlp.fc2 = nn.Linear(h, int(h * c.mlp_ratio), **dd), nn.Linear(int(h * c.mlp_ratio), h, **dd)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, (2 if pre_only else 9 if dual else 6) * h, **dd))

    def before(self, x: torch.Tensor, c: torch.Tensor):
        """(q, k, v of this stream for the joint attention, what `after` needs)."""
        mod = self.adaLN_modulation(c).chunk(2 if self.pre_only else 9 if self.dual else 6, dim=-1)
        q, k, v = self.attn.qkv_of(modulate(self.norm1(x), mod[0], mod[1]))
        return (q, k, v), (x, mod)

    def after(self, attended: torch.Tensor, saved) -> torch.Tensor:
        x, mod = saved
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod[:6]
        x = x + gate_msa[:, None] * self.attn.proj(attended)
        if self.dual:  # MMDiT-X: the image stream also attends to itself alone
            q, k, v = self.attn2.qkv_of(modulate(self.norm1(saved[0]), mod[6], mod[7]))
            x = x + mod[8][:, None] * self.attn2.proj(attention(q, k, v, self.attn2.heads))
        hidden = F.gelu(self.mlp.fc1(modulate(self.norm2(x), shift_mlp, scale_mlp)), approximate="tanh")
        return x + gate_mlp[:, None] * self.mlp.fc2(hidden)


class JointBlock(nn.Module):
    def __init__(self, c: MMDiTConfig, index: int, **dd):
        super().__init__()
        last = index == c.depth - 1
        self.context_block = DismantledBlock(c, pre_only=last, **dd)
        self.x_block = DismantledBlock(c, dual=index in c.dual_attention_layers, **dd)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor):
        (cq, ck, cv), context_saved = self.context_block.before(context, c)
        (xq, xk, xv), x_saved = self.x_block.before(x, c)
        heads, n = self.x_block.attn.heads, context.shape[1]
        joint = attention(torch.cat([cq, xq], 1), torch.cat([ck, xk], 1), torch.cat([cv, xv], 1), heads)
        x = self.x_block.after(joint[:, n:], x_saved)
        context = None if self.context_block.pre_only else self.context_block.after(joint[:, :n], context_saved)
        return context, x


class MMDiT(nn.Module):
    """``forward(x, t, context, y)``: the velocity for latents x [B, C, H, W] at timestep t [B] (1000 sigma),
    text tokens `context` [B, L, context_dim] and pooled text `y` [B, pooled_dim]."""

    def __init__(self, config: MMDiTConfig, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        c, dd = config, dict(dtype=dtype, device=device)
        self.config = c
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(c.in_channels, c.hidden, c.patch_size, stride=c.patch_size, **dd)
        self.register_buffer("pos_embed", sincos_2d(c.pos_embed_max_size, c.hidden).to(**dd))
        self.t_embedder, self.y_embedder = nn.Module(), nn.Module()
        self.t_embedder.mlp, self.y_embedder.mlp = _mlp(256, c.hidden, **dd), _mlp(c.pooled_dim, c.hidden, **dd)
        self.context_embedder = nn.Linear(c.context_dim, c.hidden, **dd)
        self.joint_blocks = nn.ModuleList(JointBlock(c, i, **dd) for i in range(c.depth))
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(c.hidden, c.patch_size**2 * c.out_channels, **dd)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, 2 * c.hidden, **dd))

    def blocks(self) -> list[nn.Module]:
        """The parts that run one after another (what sequential offloading moves to the GPU in turn)."""
        return list(self.joint_blocks)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """The centre h x w patches of the position table."""
        size = self.config.pos_embed_max_size
        if h > size or w > size:
            raise ValueError(f"{h}x{w} patches exceed this model's {size}x{size} position table")
        top, left = (size - h) // 2, (size - w) // 2
        return self.pos_embed.reshape(1, size, size, -1)[:, top:top + h, left:left + w].reshape(1, h * w, -1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c, p = self.config, self.config.patch_size
        dtype = self.context_embedder.weight.dtype
        b, _, height, width = x.shape
        h, w = height // p, width // p
        tokens = self.x_embedder.proj(x.to(dtype)).flatten(2).transpose(1, 2) + self.positions(h, w).to(dtype)
        t = torch.as_tensor(t, device=x.device).expand(b)
        vec = self.t_embedder.mlp(timestep_sinusoids(t).to(dtype)) + self.y_embedder.mlp(y.to(dtype))
        ctx = self.context_embedder(context.to(dtype))
        for block in self.joint_blocks:
            ctx, tokens = block(ctx, tokens, vec)
        shift, scale = self.final_layer.adaLN_modulation(vec).chunk(2, dim=-1)
        out = self.final_layer.linear(modulate(self.final_layer.norm_final(tokens), shift, scale))
        out = out.reshape(b, h, w, p, p, c.out_channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c.out_channels, height, width).to(x.dtype)


__all__ = ["MMDiT", "MMDiTConfig", "RMSNorm", "modulate", "rms_norm", "sincos_2d", "timestep_sinusoids"]
