"""The KL-regularised autoencoder of latent diffusion, in the original parameter layout.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", Sec. 3.1
and Appendix G: a convolutional encoder to a diagonal Gaussian over ``embed_dim`` latent channels
at 1/2**(levels-1) resolution, a small KL penalty towards N(0, I) (the VAE of Kingma & Welling
2014 with a tiny weight), and a mirrored decoder. Attribute names are those of the CompVis
``ldm/modules/diffusionmodules/model.py`` (``encoder.down.N.block.M``, ``encoder.mid.attn_1``,
``decoder.up.N.upsample``, ``quant_conv``, ...), so Stable Diffusion's ``first_stage_model.*``
tensors load with ``load_state_dict(strict=True)`` once that prefix is stripped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from .attention import GroupNorm32, attention
from .config import JSONConfig

VAE_NORM_EPS = 1e-6


@dataclass(frozen=True)
class VAEConfig(JSONConfig):
    """Every size of the LDM autoencoder (the ``ddconfig`` of the original configs, plus scaling).

    ``attn_resolutions`` lists pixel resolutions (relative to the nominal ``resolution``) at which
    the encoder's and decoder's levels add self-attention after each block; the middle blocks
    always have it. The pipeline feeds the UNet ``(z - shift_factor) * scaling_factor``.
    """

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    attn_resolutions: tuple[int, ...] = ()
    resolution: int = 256
    dropout: float = 0.0
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    use_quant_conv: bool = True  # SD3's and FLUX's 16-channel autoencoders have no quant_conv / post_quant_conv

    def __post_init__(self):
        for name in ("ch_mult", "attn_resolutions"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        for mult in self.ch_mult:
            if (self.ch * mult) % 32:
                raise UserError(f"ch * ch_mult must be multiples of 32 (GroupNorm(32)), not {self.ch * mult}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def sd(cls) -> "VAEConfig":
        """Stable Diffusion 1.x/2.x's f8 autoencoder (kl-f8), 83.7M parameters."""
        return cls()

    @classmethod
    def sdxl(cls) -> "VAEConfig":
        """SDXL's autoencoder: kl-f8's architecture, retrained, with scaling factor 0.13025."""
        return cls(scaling_factor=0.13025)

    @classmethod
    def tiny(cls) -> "VAEConfig":
        """Two levels of 32 and 64 channels (f2), for tests."""
        return cls(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16)


class DiagonalGaussian:
    """The encoder's posterior q(z|x) = N(mean, diag(exp(logvar))), logvar clamped to [-30, 20]."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * noise; the noise comes from ``generator`` on its own device (CPU generators work for GPU tensors)."""
        device = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
        return self.mean + self.std * noise.to(self.mean)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent channels and positions: [B]."""
        mean, var, logvar = self.mean.float(), self.var.float(), self.logvar.float()
        return 0.5 * (mean.pow(2) + var - 1.0 - logvar).sum(dim=(1, 2, 3))


class ResnetBlock(nn.Module):
    """Norm-SiLU-conv twice, with a 1x1 ``nin_shortcut`` when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, dd: dict):
        super().__init__()
        self.norm1 = GroupNorm32(in_channels, VAE_NORM_EPS, **dd)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, **dd)
        self.norm2 = GroupNorm32(out_channels, VAE_NORM_EPS, **dd)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, **dd)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, **dd) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with 1x1-conv q, k, v and output projections."""

    def __init__(self, channels: int, dd: dict):
        super().__init__()
        self.norm = GroupNorm32(channels, VAE_NORM_EPS, **dd)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1, **dd) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (layer(n).flatten(2).transpose(1, 2) for layer in (self.q, self.k, self.v))  # [B, HW, C]
        out = attention(q, k, v, heads=1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad one pixel right and bottom only, then a stride-2 3x3 conv without padding (the original's asymmetry)."""

    def __init__(self, channels: int, dd: dict):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int, dd: dict):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], attns: list[nn.Module], **resample: nn.Module) -> nn.Module:
    """One resolution level: ``block.M``, ``attn.M`` (possibly empty) and ``downsample``/``upsample``
    (an identity, without parameters, at the level that does not change resolution)."""
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    for name, module in resample.items():
        setattr(level, name, module)
    return level


def _mid(channels: int, dropout: float, dd: dict) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, dropout, dd)
    mid.attn_1 = AttnBlock(channels, dd)
    mid.block_2 = ResnetBlock(channels, channels, dropout, dd)
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    """x [B, in, H, W] -> Gaussian moments [B, 2 * z_channels, H/f, W/f]."""

    def __init__(self, c: VAEConfig, dd: dict):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1, **dd)
        self.down = nn.ModuleList()
        res, ch = c.resolution, c.ch
        for i, mult in enumerate(c.ch_mult):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(ch, c.ch * mult, c.dropout, dd))
                ch = c.ch * mult
                if res in c.attn_resolutions:
                    attns.append(AttnBlock(ch, dd))
            last = i == len(c.ch_mult) - 1
            self.down.append(_level(blocks, attns, downsample=nn.Identity() if last else Downsample(ch, dd)))
            res = res if last else res // 2
        self.mid = _mid(ch, c.dropout, dd)
        self.norm_out = GroupNorm32(ch, VAE_NORM_EPS, **dd)
        self.conv_out = nn.Conv2d(ch, 2 * c.z_channels, 3, padding=1, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.downsample(_run_level(level, h))
        h = _run_mid(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z [B, z_channels, h, w] -> x [B, out, h*f, w*f]. ``up[i]`` mirrors ``down[i]`` (run from the last)."""

    def __init__(self, c: VAEConfig, dd: dict):
        super().__init__()
        ch = c.ch * c.ch_mult[-1]
        res = c.resolution // c.downsample_factor
        self.conv_in = nn.Conv2d(c.z_channels, ch, 3, padding=1, **dd)
        self.mid = _mid(ch, c.dropout, dd)
        levels = []
        for i in reversed(range(len(c.ch_mult))):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, c.ch * c.ch_mult[i], c.dropout, dd))
                ch = c.ch * c.ch_mult[i]
                if res in c.attn_resolutions:
                    attns.append(AttnBlock(ch, dd))
            levels.insert(0, _level(blocks, attns, upsample=Upsample(ch, dd) if i else nn.Identity()))
            res = res * 2 if i else res
        self.up = nn.ModuleList(levels)
        self.norm_out = GroupNorm32(ch, VAE_NORM_EPS, **dd)
        self.conv_out = nn.Conv2d(ch, c.out_channels, 3, padding=1, **dd)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = level.upsample(_run_level(level, h))
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """Images in [-1, 1] <-> unscaled latents. ``encode(x)`` -> `DiagonalGaussian`; ``decode(z)`` -> x."""

    def __init__(self, config: VAEConfig, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        dd = dict(dtype=dtype, device=device)
        self.config = config
        self.encoder = Encoder(config, dd)
        self.decoder = Decoder(config, dd)
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1, **dd)
            self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1, **dd)
        else:
            self.quant_conv, self.post_quant_conv = nn.Identity(), nn.Identity()

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def blocks(self) -> list[nn.Module]:
        """The parts that run one after another (what sequential offloading moves to the GPU in turn)."""
        return [self.encoder, self.decoder, self.quant_conv, self.post_quant_conv]

    def decode_tiled(self, z: torch.Tensor, tile: int = 64, overlap: int = 16) -> torch.Tensor:
        """`decode` in overlapping latent tiles, blended with linear ramps: bounded memory for large images.

        Each tile is decoded alone (its GroupNorm statistics are its own, as in diffusers' and
        A1111's tiled VAEs), so the result differs slightly from a whole decode, most visibly in
        flat areas; seams are hidden by the `overlap` latent pixels of cross-fade.
        """
        _, _, h, w = z.shape
        if h <= tile and w <= tile:
            return self.decode(z)
        f = self.config.downsample_factor
        stride = tile - overlap
        out = weight = None
        for top in sorted({*range(0, max(h - tile, 0) + 1, stride), max(h - tile, 0)}):
            for left in sorted({*range(0, max(w - tile, 0) + 1, stride), max(w - tile, 0)}):
                piece = self.decode(z[:, :, top: top + tile, left: left + tile]).float()
                if out is None:
                    out = torch.zeros(z.shape[0], piece.shape[1], h * f, w * f, device=z.device)
                    weight = torch.zeros(1, 1, h * f, w * f, device=z.device)
                ramp = _ramp(piece.shape[-2], overlap * f, top > 0, top + tile < h, z.device)[:, None] * \
                    _ramp(piece.shape[-1], overlap * f, left > 0, left + tile < w, z.device)[None, :]
                rows, cols = slice(top * f, top * f + piece.shape[-2]), slice(left * f, left * f + piece.shape[-1])
                out[:, :, rows, cols] += piece * ramp
                weight[:, :, rows, cols] += ramp
        return (out / weight).to(z.dtype)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Reconstruction of x from a posterior sample, and the posterior."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior


def _ramp(n: int, fade: int, fade_in: bool, fade_out: bool, device) -> torch.Tensor:
    """Blend weights along one side of a tile: rising over `fade` pixels where a neighbour overlaps."""
    w = torch.ones(n, device=device)
    steps = torch.arange(1, fade + 1, device=device, dtype=torch.float32) / (fade + 1)
    if fade_in and fade:
        w[:fade] = steps
    if fade_out and fade:
        w[-fade:] = torch.minimum(w[-fade:], steps.flip(0))
    return w
