"""Reduced Stable Diffusion models built in diffusers with random weights, written as people have them.

Each family keeps its structural features at a fraction of the size:

    sd1   conv proj_in/out, 8 heads, attention on all but the last level, 2 res blocks per level
    sd2   linear projections, 64-channel heads (diffusers' per-level head list)
    sdxl  no attention on the first level, per-level transformer depths, the text_time ``y``

``write_single_file`` turns diffusers weights into the original layout with noisecraft's key map and
then checks that diffusers' own LDM converter maps the file back to the very same tensors, so the
file is a faithful original-layout checkpoint, independent of the loader under test.
"""

from __future__ import annotations

from pathlib import Path

import torch

import diffusers
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

from noisecraft.checkpoints import keymaps
from noisecraft.checkpoints import write_safetensors

POOLED, TIME_DIM = 32, 8  # SDXL's pooled text width and per-number sinusoid width, shrunk


def unet_kwargs(family: str, in_channels: int = 4, context: int | None = None, pooled: int = POOLED) -> dict:
    """diffusers UNet2DConditionModel arguments; `context` (cross-attention width) and `pooled` fit the text encoders."""
    common = dict(sample_size=16, in_channels=in_channels, out_channels=4, norm_num_groups=32)
    kwargs = _family_kwargs(family, pooled)
    if context is not None:
        kwargs["cross_attention_dim"] = context
    return common | kwargs


def _family_kwargs(family: str, pooled: int) -> dict:
    common = {}
    if family == "sd1":
        return common | dict(block_out_channels=(32, 64, 64), layers_per_block=2, cross_attention_dim=32,
                             down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                             attention_head_dim=8)
    if family == "sd2":
        return common | dict(block_out_channels=(64, 128), layers_per_block=2, cross_attention_dim=48,
                             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                             attention_head_dim=[1, 2], use_linear_projection=True)
    if family == "sdxl":
        return common | dict(block_out_channels=(64, 128, 128), layers_per_block=1, cross_attention_dim=64,
                             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                             up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                             transformer_layers_per_block=(1, 1, 2), attention_head_dim=[1, 2, 2],
                             use_linear_projection=True, addition_embed_type="text_time",
                             addition_time_embed_dim=TIME_DIM, projection_class_embeddings_input_dim=pooled + 6 * TIME_DIM)
    raise ValueError(family)


def randomize(module: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter, zero-initialised ones included, so that every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def make_unet(family: str, in_channels: int = 4, seed: int = 0, **kwargs) -> "diffusers.UNet2DConditionModel":
    torch.manual_seed(seed)
    return randomize(diffusers.UNet2DConditionModel(**unet_kwargs(family, in_channels, **kwargs)), seed=seed)


def make_vae(family: str, seed: int = 1) -> "diffusers.AutoencoderKL":
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=32, sample_size=32,
                                  scaling_factor=0.13025 if family == "sdxl" else 0.18215)
    return randomize(vae, 0.02, seed)


def ldm_unet(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet's weights in the original layout, checked against diffusers' own converter."""
    from noisecraft.checkpoints.sd_config import unet_config_from_diffusers
    from noisecraft.models.unet import UNet

    config = unet_config_from_diffusers(dict(unet.config))
    with torch.device("meta"):
        keys = UNet(config).state_dict().keys()
    state = keymaps.unet_from_diffusers(unet.state_dict(), keys)
    back = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in state.items()}, dict(unet.config))
    reference = unet.state_dict()
    assert back.keys() == reference.keys() and all(_same(back[k], reference[k]) for k in reference)
    return state


def ldm_vae(vae) -> dict[str, torch.Tensor]:
    """A diffusers VAE's weights in the original layout, checked against diffusers' own converter."""
    from noisecraft.checkpoints.sd import vae_from_diffusers_layout

    c = vae.config
    state = vae_from_diffusers_layout(vae.state_dict())
    back = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in state.items()}, dict(c))
    reference = vae.state_dict()
    assert back.keys() == reference.keys() and all(_same(back[k], reference[k]) for k in reference)
    return state


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)


def write_single_file(path: Path, unet, vae, text_state: dict[str, torch.Tensor] | None = None,
                      metadata: dict[str, str] | None = None) -> Path:
    """An original-layout single-file checkpoint (``model.diffusion_model.*``, ``first_stage_model.*``, text)."""
    tensors = {f"model.diffusion_model.{k}": v.contiguous() for k, v in ldm_unet(unet).items()}
    tensors |= {f"first_stage_model.{k}": v.contiguous() for k, v in ldm_vae(vae).items()}
    tensors |= {k: v.contiguous() for k, v in (text_state or {}).items()}
    return write_safetensors(path, tensors, metadata or {})
