"""The FLUX.1 transformer (Black Forest Labs, 2024; dev and schnell), with the original (``flux/model.py``)
parameter names, so a single file's tensors load with ``load_state_dict(strict=True)``.

Latents are packed 2x2 into 64-channel tokens with 3-axis positions (0, row, column); text tokens (T5) get
position 0. 19 double-stream blocks (image and text with their own weights, one joint attention, as SD3's
MMDiT) then 38 single-stream blocks (one sequence, text first; attention and MLP in parallel from one
projection). Queries and keys are RMS-normed per head and rotated by 3-axis RoPE on interleaved pairs. The
conditioning vector is the timestep's, plus CLIP-L's pooled text, plus (dev) the distilled guidance scale's::

    img_in, txt_in                                  packed latents / T5 tokens -> hidden
    time_in, vector_in, guidance_in .{in,out}_layer  256 sinusoids of 1000 t (and of 1000 g) / pooled -> hidden
    double_blocks.{i}.{img,txt}_{mod.lin, attn.qkv, attn.norm.{query,key}_norm.scale, attn.proj, mlp.0, mlp.2}
    single_blocks.{i}.{modulation.lin, linear1, linear2, norm.{query,key}_norm.scale}
    final_layer.{adaLN_modulation.1, linear}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import JSONConfig
from .mmdit import modulate, rms_norm, timestep_sinusoids


@dataclass(frozen=True)
class FluxConfig(JSONConfig):
    in_channels: int = 64  # 16 latent channels x 2 x 2
    out_channels: int = 64
    context_dim: int = 4096  # T5-XXL
    pooled_dim: int = 768  # CLIP-L pooled
    hidden: int = 3072
    heads: int = 24
    depth: int = 19  # double-stream blocks
    depth_single: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)  # RoPE widths per position axis; they sum to hidden / heads
    theta: float = 10000.0
    mlp_ratio: float = 4.0
    guidance_embed: bool = True  # dev: the distilled guidance scale is an input; schnell: none

    def __post_init__(self):
        if isinstance(self.axes_dim, list):
            object.__setattr__(self, "axes_dim", tuple(self.axes_dim))


def rope(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: float, float32_angles: bool = False) -> torch.Tensor:
    """[L, head_dim / 2, 2, 2] rotation matrices for positions `ids` [L, n_axes], each axis its own widths; the
    angles in float64 (FLUX), or rounded to float32 before their cosines and sines (Z-Image's complex64 tables)."""
    parts = []
    for axis, dim in enumerate(axes_dim):
        omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim)
        angles = ids[:, axis].to(torch.float64)[:, None] * omega[None]
        angles = angles.float() if float32_angles else angles
        cos, sin = torch.cos(angles), torch.sin(angles)
        parts.append(torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*angles.shape, 2, 2))
    return torch.cat(parts, dim=1).float()


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, D] with its adjacent pairs rotated by `rotations` [L, D/2, 2, 2]."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = rotations[..., 0] * pairs[..., 0] + rotations[..., 1] * pairs[..., 1]
    return out.reshape(x.shape).to(x.dtype)


def joint_attention(q, k, v, rotations) -> torch.Tensor:
    """[B, H, L, D] each -> [B, L, H*D], queries and keys rotated first."""
    q, k = apply_rope(q, rotations), apply_rope(k, rotations)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


class MLPEmbedder(nn.Module):
    def __init__(self, inner: int, hidden: int, **dd):
        super().__init__()
        self.in_layer, self.out_layer = nn.Linear(inner, hidden, **dd), nn.Linear(hidden, hidden, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class ScaleRMSNorm(nn.Module):
    """RMSNorm with its weight called ``scale``, as the original names it."""

    def __init__(self, dim: int, **dd):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.scale)


class QKNorm(nn.Module):
    def __init__(self, dim: int, **dd):
        super().__init__()
        self.query_norm, self.key_norm = ScaleRMSNorm(dim, **dd), ScaleRMSNorm(dim, **dd)


class StreamAttention(nn.Module):
    def __init__(self, c: FluxConfig, **dd):
        super().__init__()
        self.heads = c.heads
        self.qkv, self.norm, self.proj = nn.Linear(c.hidden, 3 * c.hidden, **dd), QKNorm(c.hidden // c.heads, **dd), nn.Linear(c.hidden, c.hidden, **dd)

    def qkv_of(self, x: torch.Tensor):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.norm.query_norm(q), self.norm.key_norm(k), v


class Modulation(nn.Module):
    def __init__(self, hidden: int, parts: int, **dd):
        super().__init__()
        self.parts, self.lin = parts, nn.Linear(hidden, parts * hidden, **dd)

    def forward(self, vec: torch.Tensor):
        return self.lin(F.silu(vec)).chunk(self.parts, dim=-1)


def _gelu_mlp(c: FluxConfig, **dd) -> nn.Sequential:
    inner = int(c.hidden * c.mlp_ratio)
    return nn.Sequential(nn.Linear(c.hidden, inner, **dd), nn.GELU(approximate="tanh"), nn.Linear(inner, c.hidden, **dd))


class DoubleStreamBlock(nn.Module):
    def __init__(self, c: FluxConfig, **dd):
        super().__init__()
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(c.hidden, 6, **dd))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn", StreamAttention(c, **dd))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", _gelu_mlp(c, **dd))

    def _stream(self, name: str, x: torch.Tensor, vec: torch.Tensor):
        mod = getattr(self, f"{name}_mod")(vec)
        return getattr(self, f"{name}_attn").qkv_of(modulate(getattr(self, f"{name}_norm1")(x), mod[0], mod[1])), mod

    def _after(self, name: str, x: torch.Tensor, attended: torch.Tensor, mod) -> torch.Tensor:
        x = x + mod[2][:, None] * getattr(self, f"{name}_attn").proj(attended)
        return x + mod[5][:, None] * getattr(self, f"{name}_mlp")(modulate(getattr(self, f"{name}_norm2")(x), mod[3], mod[4]))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, rotations: torch.Tensor):
        (iq, ik, iv), img_mod = self._stream("img", img, vec)
        (tq, tk, tv), txt_mod = self._stream("txt", txt, vec)
        out = joint_attention(torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2), rotations)
        n = txt.shape[1]
        return self._after("img", img, out[:, n:], img_mod), self._after("txt", txt, out[:, :n], txt_mod)


class SingleStreamBlock(nn.Module):
    def __init__(self, c: FluxConfig, **dd):
        super().__init__()
        self.heads, self.hidden, self.inner = c.heads, c.hidden, int(c.hidden * c.mlp_ratio)
        self.linear1 = nn.Linear(c.hidden, 3 * c.hidden + self.inner, **dd)
        self.linear2 = nn.Linear(c.hidden + self.inner, c.hidden, **dd)
        self.norm = QKNorm(c.hidden // c.heads, **dd)
        self.pre_norm = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.modulation = Modulation(c.hidden, 3, **dd)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = self.linear1(modulate(self.pre_norm(x), shift, scale)).split([3 * self.hidden, self.inner], dim=-1)
        b, n, _ = x.shape
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = joint_attention(self.norm.query_norm(q), self.norm.key_norm(k), v, rotations)
        return x + gate[:, None] * self.linear2(torch.cat([attended, F.gelu(mlp, approximate="tanh")], dim=-1))


class Flux(nn.Module):
    """``forward(x, t, context, y, guidance)``: the velocity of latents x [B, C, H, W] (packed into 2x2 tokens here
    and unpacked after) at timestep t [B] (1000 sigma), text tokens `context` [B, Lt, context_dim] (T5), CLIP
    pooled `y` [B, pooled_dim], distilled `guidance` [B] (dev). Packed tokens [B, L, 4C] go in as they are,
    with their positions `img_ids` [L, 3]; text positions are zeros unless `txt_ids` says otherwise."""

    def __init__(self, config: FluxConfig, dtype: torch.dtype | None = None, device=None):
        super().__init__()
        c, dd = config, dict(dtype=dtype, device=device)
        self.config = c
        self.img_in, self.txt_in = nn.Linear(c.in_channels, c.hidden, **dd), nn.Linear(c.context_dim, c.hidden, **dd)
        self.time_in, self.vector_in = MLPEmbedder(256, c.hidden, **dd), MLPEmbedder(c.pooled_dim, c.hidden, **dd)
        if c.guidance_embed:
            self.guidance_in = MLPEmbedder(256, c.hidden, **dd)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(c, **dd) for _ in range(c.depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(c, **dd) for _ in range(c.depth_single))
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(c.hidden, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(c.hidden, c.out_channels, **dd)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.hidden, 2 * c.hidden, **dd))

    def blocks(self) -> list[nn.Module]:
        """The parts that run one after another (what sequential offloading moves to the GPU in turn)."""
        return [*self.double_blocks, *self.single_blocks]

    def forward(self, x, t, context, y, guidance=None, img_ids=None, txt_ids=None) -> torch.Tensor:
        if x.ndim == 4:
            height, width = x.shape[2:]
            img, img_ids = pack(x)
            return unpack(self.forward(img, t, context, y, guidance, img_ids, txt_ids), height, width).to(x.dtype)
        img, txt = x, context
        txt_ids = torch.zeros(txt.shape[1], 3, device=txt.device) if txt_ids is None else txt_ids
        c, dtype = self.config, self.img_in.weight.dtype
        b = img.shape[0]
        vec = self.time_in(timestep_sinusoids(torch.as_tensor(t, device=img.device).expand(b)).to(dtype))
        if c.guidance_embed:
            if guidance is None:
                raise ValueError("this FLUX model (dev) needs the guidance scale")
            vec = vec + self.guidance_in(timestep_sinusoids(1000 * torch.as_tensor(guidance, device=img.device).expand(b)).to(dtype))
        vec = vec + self.vector_in(y.to(dtype))
        img, txt = self.img_in(img.to(dtype)), self.txt_in(txt.to(dtype))
        rotations = rope(torch.cat([txt_ids, img_ids]), c.axes_dim, c.theta)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, rotations)
        x = torch.cat([txt, img], 1)
        for block in self.single_blocks:
            x = block(x, vec, rotations)
        x = x[:, txt.shape[1]:]
        shift, scale = self.final_layer.adaLN_modulation(vec).chunk(2, dim=-1)
        return self.final_layer.linear(modulate(self.final_layer.norm_final(x), shift, scale))


def pack(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [B, C, H, W] -> (tokens [B, H/2 * W/2, 4C] in 2x2 patches, positions [H/2 * W/2, 3])."""
    b, ch, h, w = latents.shape
    tokens = latents.reshape(b, ch, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), ch * 4)
    rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(latents.device, torch.float32)
    return tokens, ids


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack`, to latents [B, C, height, width]."""
    b, _, d = tokens.shape
    ch = d // 4
    x = tokens.reshape(b, height // 2, width // 2, ch, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, ch, height, width)


__all__ = ["Flux", "FluxConfig", "apply_rope", "pack", "rope", "unpack"]
