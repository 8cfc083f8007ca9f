"""The configs of the flow-matching transformers, read from their weights alone (single files carry none):
SD3 / SD3.5's MMDiT in Stability's layout and FLUX.1 in Black Forest Labs' layout.

    mmdit_config_of(state)   depth, width, heads (64 wide, as every SD3 uses), text/pooled widths, position
                             table size, q/k norms (3.5), MMDiT-X layers (3.5 Medium)
    flux_config_of(state)    width, heads (128 wide), double/single depths, guidance embedding (dev vs schnell)
"""

from __future__ import annotations

import math
import re

import torch

from ..errors import ModelFileError
from ..models.flux import FluxConfig
from ..models.mmdit import MMDiTConfig
from ..models.zimage import ZImageConfig

SD3_HEAD = 64
FLUX_HEAD = 128


def _indices(state: dict, pattern: str) -> list[int]:
    return sorted({int(m[1]) for k in state if (m := re.match(pattern, k))})


def mmdit_config_of(state: dict[str, torch.Tensor]) -> MMDiTConfig:
    """The MMDiTConfig that fits an original-layout SD3 / SD3.5 transformer state dict."""
    try:
        hidden, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
        table = state["pos_embed"].shape[1]
        context_dim = state["context_embedder.weight"].shape[1]
        pooled_dim = state["y_embedder.mlp.0.weight"].shape[1]
        out = state["final_layer.linear.weight"].shape[0]
    except KeyError as missing:
        raise ModelFileError(f"the SD3 transformer lacks {missing.args[0]}; the file is incomplete") from None
    blocks = _indices(state, r"joint_blocks\.(\d+)\.")
    if not blocks or blocks != list(range(len(blocks))):
        raise ModelFileError("the SD3 transformer's joint_blocks are missing or not numbered 0..n-1; the file is incomplete")
    size = math.isqrt(table)
    if size * size != table:
        raise ModelFileError(f"the SD3 transformer's position table has {table} entries, not a square; the file is damaged")
    dual = tuple(i for i in blocks if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in state)
    return MMDiTConfig(in_channels=in_channels, out_channels=out // (patch * patch), patch_size=patch, depth=len(blocks),
                       hidden=hidden, heads=hidden // SD3_HEAD, context_dim=context_dim, pooled_dim=pooled_dim,
                       pos_embed_max_size=size, qk_norm="joint_blocks.0.x_block.attn.ln_q.weight" in state,
                       dual_attention_layers=dual)


def flux_config_of(state: dict[str, torch.Tensor]) -> FluxConfig:
    """The FluxConfig that fits a Black Forest Labs FLUX.1 transformer state dict."""
    try:
        hidden, in_channels = state["img_in.weight"].shape
        context_dim = state["txt_in.weight"].shape[1]
        pooled_dim = state["vector_in.in_layer.weight"].shape[1]
        out = state["final_layer.linear.weight"].shape[0]
        head = state["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
        mlp = state["double_blocks.0.img_mlp.0.weight"].shape[0]
    except KeyError as missing:
        raise ModelFileError(f"the FLUX transformer lacks {missing.args[0]}; the file is incomplete") from None
    double, single = _indices(state, r"double_blocks\.(\d+)\."), _indices(state, r"single_blocks\.(\d+)\.")
    # the RoPE widths per axis are not in the weights: FLUX.1's are 16, 56, 56 of its 128-wide heads, in proportion here
    if head % 32:
        raise ModelFileError(f"the FLUX transformer's heads are {head} wide; noisecraft reads FLUX files with heads of a multiple of 32")
    axes = (head // 8, head * 7 // 16, head * 7 // 16)
    return FluxConfig(in_channels=in_channels, out_channels=out, context_dim=context_dim, pooled_dim=pooled_dim, hidden=hidden,
                      heads=hidden // head, depth=len(double), depth_single=len(single), axes_dim=axes,
                      mlp_ratio=mlp / hidden, guidance_embed="guidance_in.in_layer.weight" in state)


def zimage_config_of(state: dict[str, torch.Tensor]) -> ZImageConfig:
    """The ZImageConfig that fits a Z-Image transformer state dict in the original names."""
    try:
        hidden, patch_in = state["x_embedder.weight"].shape
        head = state["layers.0.attention.q_norm.weight"].shape[0]
        context_dim = state["cap_embedder.1.weight"].shape[1]
    except KeyError as missing:
        raise ModelFileError(f"the Z-Image transformer lacks {missing.args[0]}; the file is incomplete") from None
    if head % 8:
        raise ModelFileError(f"the Z-Image transformer's heads are {head} wide; noisecraft reads Z-Image files with heads of a multiple of 8")
    # the RoPE widths per axis are not in the weights: Z-Image's are 32, 48, 48 of its 128-wide heads, in proportion here
    return ZImageConfig(in_channels=patch_in // 4, hidden=hidden, heads=hidden // head, depth=len(_indices(state, r"layers\.(\d+)\.")),
                        refiner_depth=len(_indices(state, r"noise_refiner\.(\d+)\.")), context_dim=context_dim,
                        axes_dim=(head // 4, head * 3 // 8, head * 3 // 8))


__all__ = ["flux_config_of", "mmdit_config_of", "zimage_config_of"]
