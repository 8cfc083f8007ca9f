"""The latent-diffusion UNet of Stable Diffusion 1.x/2.x and SDXL, with the original parameter names.

Architecture: Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models" (the ADM UNet of Dhariwal & Nichol 2021 with SpatialTransformer cross-attention
blocks); SDXL's changes follow Podell et al. 2023, "SDXL: Improving Latent Diffusion Models
for High-Resolution Image Synthesis" (per-level transformer depth, linear projections, the
pooled-vector ``label_emb``). Attribute names are those of the CompVis ``openaimodel.py`` /
Stability ``sgm`` code, so a Stable Diffusion checkpoint's ``model.diffusion_model.*`` tensors
load with ``load_state_dict(strict=True)`` once that prefix is stripped.

Layout, for ``channel_mult`` with n levels and ``num_res_blocks`` = r::

    time_embed.{0,2}                 Linear, SiLU, Linear: sinusoidal(t) -> 4 * model_channels
    label_emb.0.{0,2}                (adm_in_channels only) pooled vector y, added to the above
    input_blocks.0.0                 3x3 conv in
    input_blocks.N.0                 ResBlock (in_layers, emb_layers, out_layers, skip_connection)
    input_blocks.N.1                 SpatialTransformer where the downsample factor is in
                                     attention_resolutions
    input_blocks.N.0.op              stride-2 conv between levels
    middle_block.{0,1,2}             ResBlock, SpatialTransformer, ResBlock
    output_blocks.N.{0,1,2}          ResBlock on [h, skip], SpatialTransformer?, Upsample (.conv)?
    out.{0,2}                        GroupNorm, SiLU, 3x3 conv out
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from .attention import GroupNorm32
from .config import JSONConfig
from .unet_blocks import (UNET_NORM_EPS, Downsample, ResBlock, SpatialTransformer, TimestepEmbedSequential, Upsample,
                          _zero, timestep_embedding)

__all__ = ["UNet", "UNetConfig", "build_encoder", "embed", "run_block", "timestep_embedding"]


@dataclass(frozen=True)
class UNetConfig(JSONConfig):
    """Every size of the LDM UNet. Field names and meanings follow the original configs.

    ``attention_resolutions`` lists downsample factors (1, 2, 4, ...) whose levels get a
    SpatialTransformer after each ResBlock. ``transformer_depth`` is one depth for every level or
    one per level (sgm semantics); the middle block uses ``transformer_depth_middle``, or the last
    level's depth when that is None. Heads: ``num_head_channels`` (channels per head) wins when it
    is not -1, otherwise ``num_heads`` heads of ``channels // num_heads``. ``context_dim`` None means
    no cross-attention: the second attention of each transformer block attends to the image itself,
    as in the original. ``adm_in_channels`` adds ``label_emb(y)`` to the time embedding (SDXL).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    transformer_depth: int | tuple[int, ...] = 1
    transformer_depth_middle: int | None = None
    num_heads: int = 8
    num_head_channels: int = -1
    context_dim: int | None = 768
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None
    dropout: float = 0.0
    use_checkpoint: bool = False

    def __post_init__(self):
        for name in ("channel_mult", "attention_resolutions", "transformer_depth"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if not self.channel_mult or any(not isinstance(m, int) or m < 1 for m in self.channel_mult):
            raise UserError(f"channel_mult must list one positive whole number per level, not {self.channel_mult!r}")
        if not isinstance(self.model_channels, int) or self.model_channels < 1 or not isinstance(self.num_res_blocks, int) \
                or self.num_res_blocks < 1:
            raise UserError("model_channels and num_res_blocks must be whole numbers of at least 1")
        if isinstance(self.transformer_depth, tuple) and len(self.transformer_depth) != len(self.channel_mult):
            raise UserError(f"transformer_depth has {len(self.transformer_depth)} entries but channel_mult has "
                            f"{len(self.channel_mult)} levels; give one depth per level or a single number")
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise UserError("set num_heads or num_head_channels (both are -1)")
        for mult in self.channel_mult:
            ch = self.model_channels * mult
            if ch % 32:
                raise UserError(f"model_channels * channel_mult must be multiples of 32 (GroupNorm(32)), not {ch}")
            if self.num_head_channels != -1 and ch % self.num_head_channels:
                raise UserError(f"{ch} channels do not split into heads of num_head_channels={self.num_head_channels}")

    @property
    def depths(self) -> tuple[int, ...]:
        """Transformer depth per level."""
        d = self.transformer_depth
        return (d,) * len(self.channel_mult) if isinstance(d, int) else tuple(d)

    @property
    def depth_middle(self) -> int:
        return self.depths[-1] if self.transformer_depth_middle is None else self.transformer_depth_middle

    def heads(self, channels: int) -> tuple[int, int]:
        """(number of heads, channels per head) of a transformer over ``channels``."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads

    @classmethod
    def sd15(cls) -> "UNetConfig":
        """Stable Diffusion 1.x (v1-inference.yaml): 859,520,964 parameters."""
        return cls()

    @classmethod
    def sd2(cls) -> "UNetConfig":
        """Stable Diffusion 2.x (v2-inference.yaml, 512 and 768-v): OpenCLIP-H context, 64-channel heads."""
        return cls(num_heads=-1, num_head_channels=64, context_dim=1024, use_linear_in_transformer=True)

    @classmethod
    def sdxl(cls) -> "UNetConfig":
        """SDXL 1.0 base (sd_xl_base.yaml): 3 levels, depths (0, 2, 10), pooled 2816-d ``y``."""
        return cls(model_channels=320, channel_mult=(1, 2, 4), attention_resolutions=(4, 2),
                   transformer_depth=(0, 2, 10), transformer_depth_middle=10, num_heads=-1,
                   num_head_channels=64, context_dim=2048, use_linear_in_transformer=True,
                   adm_in_channels=2816)

    @classmethod
    def tiny(cls) -> "UNetConfig":
        """About 1.7M parameters with every structural feature (attention at two of three levels), for tests."""
        return cls(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(2, 4),
                   transformer_depth=1, num_heads=-1, num_head_channels=16, context_dim=24)


def _transformer_maker(c: UNetConfig, dd: dict):
    def transformer(ch: int, depth: int) -> SpatialTransformer:
        heads, dim_head = c.heads(ch)
        return SpatialTransformer(ch, heads, dim_head, depth, c.context_dim, c.use_linear_in_transformer, c.dropout, dd)
    return transformer


def build_encoder(module: nn.Module, c: UNetConfig, dd: dict) -> tuple[list[int], int, int]:
    """The UNet's first half on `module` (a UNet, or a ControlNet's trainable copy of it): ``time_embed``,
    ``label_emb`` (with adm_in_channels), ``input_blocks`` and ``middle_block``, in the original names.
    Returns (the channels of each input block's output, the last channels, the downsampling factor)."""
    mc, emb_ch = c.model_channels, c.model_channels * 4
    transformer = _transformer_maker(c, dd)
    module.time_embed = nn.Sequential(nn.Linear(mc, emb_ch, **dd), nn.SiLU(), nn.Linear(emb_ch, emb_ch, **dd))
    if c.adm_in_channels:
        module.label_emb = nn.Sequential(nn.Sequential(
            nn.Linear(c.adm_in_channels, emb_ch, **dd), nn.SiLU(), nn.Linear(emb_ch, emb_ch, **dd)))
    module.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(c.in_channels, mc, 3, padding=1, **dd))])
    skip_channels, ch, ds = [mc], mc, 1
    for level, mult in enumerate(c.channel_mult):
        for _ in range(c.num_res_blocks):
            layers = [ResBlock(ch, emb_ch, mult * mc, c.dropout, dd)]
            ch = mult * mc
            if ds in c.attention_resolutions:
                layers.append(transformer(ch, c.depths[level]))
            module.input_blocks.append(TimestepEmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(c.channel_mult) - 1:
            module.input_blocks.append(TimestepEmbedSequential(Downsample(ch, dd)))
            skip_channels.append(ch)
            ds *= 2
    module.middle_block = TimestepEmbedSequential(
        ResBlock(ch, emb_ch, ch, c.dropout, dd), transformer(ch, c.depth_middle), ResBlock(ch, emb_ch, ch, c.dropout, dd))
    return skip_channels, ch, ds


def embed(module: nn.Module, c: UNetConfig, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """The timestep (+ pooled vector) embedding of `module` (a UNet or ControlNet) for a batch like x."""
    if c.adm_in_channels and y is None:
        raise ValueError(f"this UNet needs the pooled vector y [B, {c.adm_in_channels}]")
    if y is not None and not c.adm_in_channels:
        raise ValueError("this UNet takes no pooled vector y (its config has no adm_in_channels)")
    dtype = module.time_embed[0].weight.dtype
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    emb = module.time_embed(timestep_embedding(t, c.model_channels).to(dtype))
    return emb + module.label_emb(y.to(dtype)) if y is not None else emb


def run_block(module: nn.Module, block: TimestepEmbedSequential, h, emb, context, context_mask):
    """One block, through gradient checkpointing when the config asks for it while training."""
    if module.config.use_checkpoint and module.training and torch.is_grad_enabled():
        return checkpoint(block, h, emb, context, context_mask, use_reentrant=False)
    return block(h, emb, context, context_mask)


class UNet(nn.Module):
    """The LDM UNet: ``forward(x, t, context, y, context_mask)`` -> the network output (same shape as x).

    ``t`` [B] float timesteps (fractional allowed) or a scalar; ``context`` [B, L, context_dim]
    tokens; ``context_mask`` [B, L] bool, True = attend (SD never passes one); ``y``
    [B, adm_in_channels] pooled vector, required exactly when the config has ``adm_in_channels``.
    Inputs are cast to the parameters' dtype and the output back to x's dtype.
    """

    def __init__(self, config: UNetConfig, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        super().__init__()
        c, dd = config, dict(dtype=dtype, device=device)
        self.config = c
        mc, emb_ch = c.model_channels, c.model_channels * 4
        skip_channels, ch, ds = build_encoder(self, c, dd)

        self.output_blocks = nn.ModuleList()
        transformer = _transformer_maker(c, dd)
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_ch, mult * mc, c.dropout, dd)]
                ch = mult * mc
                if ds in c.attention_resolutions:
                    layers.append(transformer(ch, c.depths[level]))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch, dd))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch, UNET_NORM_EPS, **dd), nn.SiLU(),
                                 _zero(nn.Conv2d(mc, c.out_channels, 3, padding=1, **dd)))

    def blocks(self) -> list[nn.Module]:
        """The parts that run one after another (what sequential offloading moves to the GPU in turn)."""
        names = ("time_embed", "label_emb", "middle_block", "out")
        return [*self.input_blocks, *self.output_blocks, *(getattr(self, n) for n in names if hasattr(self, n))]

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                concat: torch.Tensor | None = None, control: tuple[list, torch.Tensor] | None = None) -> torch.Tensor:
        """eps (or v, x0) for x at timestep t. ``concat`` holds extra input channels appended to x
        (the original's ``c_concat``: an inpainting model's mask and masked-image latents); ``control`` a
        ControlNet's residuals (one per input block, one for the middle), added to the skips and the middle
        block's output (Zhang et al. 2023)."""
        c = self.config
        if concat is not None:
            x = torch.cat([x, concat.to(x)], dim=1)
        emb = embed(self, c, x, t, y)
        dtype = emb.dtype
        if context is not None:
            context = context.to(dtype)
        h, skips = x.to(dtype), []
        for block in self.input_blocks:
            h = run_block(self, block, h, emb, context, context_mask)
            skips.append(h)
        h = run_block(self, self.middle_block, h, emb, context, context_mask)
        if control is not None:
            down, mid = control
            skips = [skip + residual.to(skip) for skip, residual in zip(skips, down, strict=True)]
            h = h + mid.to(h)
        for block in self.output_blocks:
            h = run_block(self, block, torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.out(h).to(x.dtype)
