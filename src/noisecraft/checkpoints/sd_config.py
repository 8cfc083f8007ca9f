"""What a Stable Diffusion checkpoint's weights say about its model: family, network sizes, prediction.

The family is read from the weights, never from a file name:

    sd1    cross-attention width 768 (CLIP ViT-L/14), eps prediction, 512 px
    sd2    width 1024 (OpenCLIP ViT-H, penultimate layer); v prediction at 768 px or eps at 512 px
    sdxl   width 2048 (CLIP-L + OpenCLIP bigG) and a pooled ``label_emb`` input, 1024 px

and a UNet with 9 input channels is that family's inpainting model. The network sizes
(channels, levels, depths) come from the tensor shapes, so reduced test models load the same way
as real ones. Attention head counts leave no trace in the weights: they follow the family
(8 heads in SD 1.x; 64 channels per head in SD 2.x and SDXL) or a folder's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import re

import torch

from ..errors import ModelFileError
from ..models.unet import UNet, UNetConfig
from ..models.vae import VAEConfig
from .config import ModelConfig

FAMILY_DEFAULTS = {
    "sd1": dict(image_size=512, scaling_factor=0.18215),
    "sd2": dict(image_size=768, scaling_factor=0.18215),
    "sdxl": dict(image_size=1024, scaling_factor=0.13025),
    "sd3": dict(image_size=1024, scaling_factor=1.5305, shift_factor=0.0609),  # the 16-channel autoencoders
    "flux": dict(image_size=1024, scaling_factor=0.3611, shift_factor=0.1159),
    "zimage": dict(image_size=1024, scaling_factor=0.3611, shift_factor=0.1159),  # FLUX.1's autoencoder
}
SD_DEFAULTS = {"steps": 20, "guidance_scale": 7.0, "sampler": "dpmpp_2m_karras"}


# -- what the weights say -----------------------------------------------------------------------
def family_of(unet: dict[str, torch.Tensor]) -> str:
    """sd1 / sd2 / sdxl from an original-layout UNet state dict."""
    context = next((v.shape[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight")), None)
    if "label_emb.0.0.weight" in unet:
        return "sdxl"
    if context == 1024:
        return "sd2"
    if context == 768:
        return "sd1"
    if context is None:
        raise ModelFileError("the UNet has no cross-attention, so it is not a Stable Diffusion text-to-image model")
    # reduced models (tests, distillations): the projections tell SD 2.x's linear layers from SD 1.x's convs
    linear = next(v.ndim == 2 for k, v in unet.items() if k.endswith("proj_in.weight"))
    return "sd2" if linear else "sd1"


def unet_config_of(unet: dict[str, torch.Tensor], family: str, heads: dict | None = None, encoder_only: bool = False) -> UNetConfig:
    """The UNetConfig that fits an original-layout UNet state dict (`encoder_only`: a ControlNet's copy of
    the first half, which has no output layer)."""
    try:
        model_channels, in_channels = unet["input_blocks.0.0.weight"].shape[:2]
        out_channels = in_channels if encoder_only else unet["out.2.weight"].shape[0]
    except KeyError as error:
        raise ModelFileError(f"the UNet lacks {error.args[0]}; the file is not a complete Stable Diffusion model") from None
    blocks = sorted({int(m[1]) for k in unet if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    downsamples = [n for n in blocks if f"input_blocks.{n}.0.op.weight" in unet]
    r = downsamples[0] - 1 if downsamples else len(blocks) - 1
    levels = len(downsamples) + 1
    mult, attention, depths = [], [], []
    for level in range(levels):
        first = 1 + level * (r + 1)
        mult.append(unet[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0] // model_channels)
        depth = len({m[1] for k in unet if (m := re.match(rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.", k))})
        depths.append(depth)
        if depth:
            attention.append(2**level)
    middle = len({m[1] for k in unet if (m := re.match(r"middle_block\.1\.transformer_blocks\.(\d+)\.", k))})
    context = next(v.shape[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight"))
    linear = next(v.ndim == 2 for k, v in unet.items() if k.endswith("proj_in.weight"))
    heads = heads or ({"num_heads": 8, "num_head_channels": -1} if family == "sd1" else {"num_heads": -1, "num_head_channels": 64})
    return UNetConfig(
        in_channels=in_channels, out_channels=out_channels, model_channels=model_channels, channel_mult=tuple(mult),
        num_res_blocks=r, attention_resolutions=tuple(attention),
        transformer_depth=tuple(depths), transformer_depth_middle=middle,
        context_dim=context, use_linear_in_transformer=linear,
        adm_in_channels=unet["label_emb.0.0.weight"].shape[1] if "label_emb.0.0.weight" in unet else None, **heads)


def vae_config_of(vae: dict[str, torch.Tensor], family: str, declared: dict | None = None) -> VAEConfig:
    """The VAEConfig that fits an original-layout VAE state dict; `declared`: a diffusers ``vae/config.json``, whose
    scaling (and shift) factor wins over the family's."""
    try:
        ch, in_channels = vae["encoder.conv_in.weight"].shape[:2]
        z_channels = vae["decoder.conv_in.weight"].shape[1]
        embed_dim = vae["post_quant_conv.weight"].shape[0] if "post_quant_conv.weight" in vae else z_channels
    except KeyError as error:
        raise ModelFileError(f"the VAE lacks {error.args[0]}; the file holds no complete Stable Diffusion autoencoder") from None
    levels = 1 + max(int(m[1]) for k in vae if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    mult = tuple(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels))
    blocks = len({m[1] for k in vae if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    attn = any(re.match(r"encoder\.down\.\d+\.attn\.", k) for k in vae)
    if attn:
        raise ModelFileError("this VAE has attention inside its levels, which Stable Diffusion's autoencoders do not; it is not supported")
    scaling, shift = FAMILY_DEFAULTS[family]["scaling_factor"], FAMILY_DEFAULTS[family].get("shift_factor", 0.0)
    if (declared or {}).get("scaling_factor"):
        scaling, shift = float(declared["scaling_factor"]), float(declared.get("shift_factor") or 0.0)
    return VAEConfig(in_channels=in_channels, out_channels=vae["decoder.conv_out.weight"].shape[0], ch=ch, ch_mult=mult,
                     num_res_blocks=blocks, z_channels=z_channels, embed_dim=embed_dim, scaling_factor=scaling,
                     shift_factor=shift, use_quant_conv="post_quant_conv.weight" in vae)


def declared_size(metadata: dict | None) -> int | None:
    """The model spec's native size ("1024x1024" in ``modelspec.resolution``), when square."""
    declared = re.fullmatch(r"\s*(\d{2,5})\s*x\s*(\d{2,5})\s*", str((metadata or {}).get("modelspec.resolution", "")))
    return int(declared[1]) if declared and declared[1] == declared[2] else None


def prediction_of(family: str, metadata: dict, unet_config: UNetConfig, unet: dict, override: str | None) -> str:
    """eps or v: an explicit choice, the file's ModelSpec metadata, else what the family implies."""
    if override:
        return {"epsilon": "eps", "v_prediction": "v"}.get(override, override)
    declared = str(metadata.get("modelspec.prediction_type", "")).lower()
    if declared in ("v", "v_prediction", "v-prediction"):
        return "v"
    if declared in ("epsilon", "eps"):
        return "eps"
    if str(metadata.get("modelspec.architecture", "")).endswith("-v"):
        return "v"
    if family == "sd2" and unet_config.context_dim == 1024 and unet_config.model_channels == 320:
        return "v" if _looks_like_v(unet_config, unet) else "eps"
    return "eps"


@torch.no_grad()
def _looks_like_v(config: UNetConfig, unet: dict[str, torch.Tensor]) -> bool:
    """Tell SD 2.x's 768-v models from its 512 eps ones when nothing else says (AUTOMATIC1111's probe).

    At t=999 the input is almost pure noise. An eps model predicts that noise, so for a constant
    input of 0.5 its output stays near the input; a v model predicts v = alpha*eps - sigma*x0, which
    for this input comes out strongly negative. A mean of (output - input) below -1 means v.
    """
    with torch.device("meta"):
        net = UNet(config)
    net.load_state_dict({k: v.float() for k, v in unet.items()}, strict=True, assign=True)
    x = torch.full((1, 4, 8, 8), 0.5)
    out = net(x, torch.tensor([999.0]), torch.full((1, 2, config.context_dim), 0.5))
    return (out - x).mean().item() < -1


def model_config(family: str, unet_config: UNetConfig, vae_config: VAEConfig, prediction: str, name: str,
                 metadata: dict | None = None) -> ModelConfig:
    image_size = FAMILY_DEFAULTS[family]["image_size"]
    if family == "sd2" and prediction == "eps":
        image_size = 512
    image_size = declared_size(metadata) or image_size
    return ModelConfig(kind="latent", unet=unet_config, vae=vae_config, text_encoder=f"clip-{family}",
                       prediction=prediction, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                       num_train_timesteps=1000, image_size=image_size, name=name, defaults=dict(SD_DEFAULTS))


def _heads_from_diffusers(config: dict, unet_config: UNetConfig) -> dict | None:
    """Head counts from a diffusers UNet config (whose ``attention_head_dim`` means heads, for history)."""
    heads = config.get("num_attention_heads") or config.get("attention_head_dim")
    if heads is None:
        return None
    per_level = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(unet_config.channel_mult)
    widths = [unet_config.model_channels * m for m in unet_config.channel_mult]
    if len(set(per_level)) == 1:
        return {"num_heads": per_level[0], "num_head_channels": -1}
    head_channels = {w // h for w, h in zip(widths, per_level)}
    if len(head_channels) == 1:
        return {"num_heads": -1, "num_head_channels": head_channels.pop()}
    raise ModelFileError("this UNet's attention heads vary in a way the original layout cannot express; it is not supported")


def unet_config_from_diffusers(config: dict) -> UNetConfig:
    """The UNetConfig of a diffusers ``unet/config.json`` (UNet2DConditionModel)."""
    try:
        widths = list(config["block_out_channels"])
        kinds = list(config["down_block_types"])
        depth = config.get("transformer_layers_per_block", 1)
        depths = list(depth) if isinstance(depth, (list, tuple)) else [depth] * len(widths)
        has_attention = ["CrossAttn" in kind for kind in kinds]
        base = UNetConfig(
            in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4), model_channels=widths[0],
            channel_mult=tuple(w // widths[0] for w in widths), num_res_blocks=config.get("layers_per_block", 2),
            attention_resolutions=tuple(2**i for i, a in enumerate(has_attention) if a),
            transformer_depth=tuple(d if a else 0 for d, a in zip(depths, has_attention)),
            transformer_depth_middle=depths[-1], context_dim=config["cross_attention_dim"],
            use_linear_in_transformer=bool(config.get("use_linear_projection", False)),
            adm_in_channels=config.get("projection_class_embeddings_input_dim") if config.get("addition_embed_type") == "text_time" else None,
            num_heads=8)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"the diffusers unet/config.json is incomplete or unusual ({error}); it cannot be loaded") from None
    if config.get("class_embed_type") or config.get("addition_embed_type") not in (None, "text_time"):
        raise ModelFileError("this diffusers UNet has an extra embedding (class or image conditioning) that Stable Diffusion text-to-image models do not use; it is not supported")
    heads = _heads_from_diffusers(config, base) or {}
    return dataclasses.replace(base, **heads)
