"""Stable Diffusion checkpoints as people have them: single files and diffusers folders.

A single file in the original layout holds ``model.diffusion_model.*`` (UNet),
``first_stage_model.*`` (VAE) and the text encoder(s) under ``cond_stage_model.*`` (SD 1.x/2.x)
or ``conditioner.embedders.{0,1}.*`` (SDXL). A diffusers folder holds ``unet/``, ``vae/``,
``text_encoder[_2]/``, ``tokenizer[_2]/`` and ``scheduler/`` with their own names
(`keymaps` renames them to the original layout, so one code path serves both).

The family is read from the weights, never from a file name:

    sd1    cross-attention width 768 (CLIP ViT-L/14), eps prediction, 512 px
    sd2    width 1024 (OpenCLIP ViT-H, penultimate layer); v prediction at 768 px or eps at 512 px
    sdxl   width 2048 (CLIP-L + OpenCLIP bigG) and a pooled ``label_emb`` input, 1024 px

and a UNet with 9 input channels is that family's inpainting model. The network sizes
(channels, levels, depths) come from the tensor shapes, so reduced test models load the same way
as real ones. Attention head counts leave no trace in the weights: they follow the family
(8 heads in SD 1.x; 64 channels per head in SD 2.x and SDXL) or a folder's ``config.json``.

Safety: tensors are read from safetensors; a legacy ``.ckpt``/``.pt`` (a pickle) only through
``torch.load(weights_only=True)``, which unpickles tensors and plain containers and refuses
anything else. The format is decided by the file's first bytes, never by its extension.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import keymaps
from .checkpoints import ModelConfig
from .errors import ModelFileError, UserError
from .models.unet import UNet, UNetConfig
from .models.vae import AutoencoderKL, VAEConfig
from .weightfiles import load_weights, read_safetensors_header, sniff

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")

FAMILY_DEFAULTS = {
    "sd1": dict(image_size=512, scaling_factor=0.18215),
    "sd2": dict(image_size=768, scaling_factor=0.18215),
    "sdxl": dict(image_size=1024, scaling_factor=0.13025),
}
SD_DEFAULTS = {"steps": 20, "guidance_scale": 7.0, "sampler": "dpmpp_2m_karras"}


@dataclass
class SDCheckpoint:
    """A Stable Diffusion model read from disk, ready for `Pipeline` to build its networks."""

    config: ModelConfig
    parts: dict[str, dict[str, torch.Tensor]]  # "unet", "vae": original layout
    file: Path  # the file that names and hashes the model
    family: str
    text_state: dict[str, torch.Tensor] = field(default_factory=dict)  # single files: the text encoder tensors
    folder: Path | None = None  # diffusers folders: where text_encoder/ and tokenizer/ live


# -- reading tensors --------------------------------------------------------------------------
def read_tensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a weights file (a legacy checkpoint's ``state_dict`` unwrapped) and its metadata."""
    data, metadata = load_weights(file)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelFileError(f"{file} holds no state dict of weights")
    return {k: v for k, v in data.items() if torch.is_tensor(v)}, metadata


def check_finite(tensors: dict[str, torch.Tensor], file: Path) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelFileError(f"{file} has NaN or infinite weights in {len(bad)} tensor(s) (first: {bad[0]}); the model is broken")


def split_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


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


def unet_config_of(unet: dict[str, torch.Tensor], family: str, heads: dict | None = None) -> UNetConfig:
    """The UNetConfig that fits an original-layout UNet state dict."""
    try:
        model_channels, in_channels = unet["input_blocks.0.0.weight"].shape[:2]
        out_channels = unet["out.2.weight"].shape[0]
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


def vae_config_of(vae: dict[str, torch.Tensor], family: str) -> VAEConfig:
    """The VAEConfig that fits an original-layout VAE state dict."""
    try:
        ch, in_channels = vae["encoder.conv_in.weight"].shape[:2]
        z_channels = vae["decoder.conv_in.weight"].shape[1]
        embed_dim = vae["post_quant_conv.weight"].shape[0]
    except KeyError as error:
        raise ModelFileError(f"the VAE lacks {error.args[0]}; the file holds no complete Stable Diffusion autoencoder") from None
    levels = 1 + max(int(m[1]) for k in vae if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    mult = tuple(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels))
    blocks = len({m[1] for k in vae if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    attn = any(re.match(r"encoder\.down\.\d+\.attn\.", k) for k in vae)
    if attn:
        raise ModelFileError("this VAE has attention inside its levels, which Stable Diffusion's autoencoders do not; it is not supported")
    return VAEConfig(in_channels=in_channels, out_channels=vae["decoder.conv_out.weight"].shape[0], ch=ch, ch_mult=mult,
                     num_res_blocks=blocks, z_channels=z_channels, embed_dim=embed_dim,
                     scaling_factor=FAMILY_DEFAULTS[family]["scaling_factor"])


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


def model_config(family: str, unet_config: UNetConfig, vae_config: VAEConfig, prediction: str, name: str) -> ModelConfig:
    image_size = FAMILY_DEFAULTS[family]["image_size"]
    if family == "sd2" and prediction == "eps":
        image_size = 512
    return ModelConfig(kind="latent", unet=unet_config, vae=vae_config, text_encoder=f"clip-{family}",
                       prediction=prediction, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                       num_train_timesteps=1000, image_size=image_size, name=name, defaults=dict(SD_DEFAULTS))


# -- loading ---------------------------------------------------------------------------------------
def is_sd_single_file(file: Path) -> bool:
    """Whether a safetensors file is a Stable Diffusion single file (by its tensor names)."""
    if sniff(file) != "safetensors":
        return sniff(file) in ("zip-pickle", "pickle")
    header = read_safetensors_header(file)
    return any(k.startswith(UNET_PREFIX) for k in header)


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "unet").is_dir() and ((path / "model_index.json").exists() or (path / "vae").is_dir())


def load_single_file(file: Path, *, prediction: str | None = None) -> SDCheckpoint:
    state, metadata = read_tensors(file)
    unet = split_prefix(state, UNET_PREFIX)
    vae = split_prefix(state, VAE_PREFIX)
    if not unet:
        raise ModelFileError(f"{file} has no model.diffusion_model.* tensors; it is not a Stable Diffusion checkpoint")
    if not vae:
        raise ModelFileError(f"{file} has no first_stage_model.* (VAE) tensors; add one with --vae FILE")
    check_finite(unet, file)
    check_finite(vae, file)
    family = family_of(unet)
    unet_config = unet_config_of(unet, family)
    text = {k: v for k, v in state.items() if k.startswith(TEXT_PREFIXES)}
    config = model_config(family, unet_config, vae_config_of(vae, family),
                          prediction_of(family, metadata, unet_config, unet, prediction), file.stem)
    return SDCheckpoint(config, {"unet": unet, "vae": vae}, file, family, text_state=text)


def _folder_part(folder: Path, part: str) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """The weights and config.json of one diffusers component (``unet``, ``vae``)."""
    directory = folder / part
    files = sorted(directory.glob("*.safetensors"))
    preferred = [f for f in files if f.name == "diffusion_pytorch_model.safetensors"] or \
                [f for f in files if f.name == "diffusion_pytorch_model.fp16.safetensors"] or files
    if not preferred:
        legacy = sorted(directory.glob("*.bin"))
        if not legacy:
            raise ModelFileError(f"{directory} holds no weights (.safetensors or .bin)")
        preferred = legacy
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    state, _ = read_tensors(preferred[0])
    check_finite(state, preferred[0])
    return state, config, preferred[0]


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


def load_diffusers_folder(folder: Path, *, prediction: str | None = None) -> SDCheckpoint:
    unet_d, unet_json, unet_file = _folder_part(folder, "unet")
    vae_d, vae_json, _ = _folder_part(folder, "vae")
    unet_config = unet_config_from_diffusers(unet_json)
    with torch.device("meta"):
        ldm_keys = UNet(unet_config).state_dict().keys()
    try:
        unet = keymaps.unet_from_diffusers(unet_d, ldm_keys)
    except KeyError as error:
        raise ModelFileError(f"{unet_file} does not match its config.json ({error.args[0]})") from None
    family = family_of(unet)
    vae = vae_from_diffusers_layout(vae_d)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text()) if scheduler_file.exists() else {}
    declared = prediction or scheduler.get("prediction_type")
    vae_config = vae_config_of(vae, family)
    if vae_json.get("scaling_factor"):
        vae_config = dataclasses.replace(vae_config, scaling_factor=float(vae_json["scaling_factor"]),
                                         shift_factor=float(vae_json.get("shift_factor") or 0.0))
    config = model_config(family, unet_config, vae_config, prediction_of(family, {}, unet_config, unet, declared), folder.name)
    return SDCheckpoint(config, {"unet": unet, "vae": vae}, unet_file, family, folder=folder)


def vae_from_diffusers_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers VAE state dict to the original layout, using a skeleton of the right size."""
    state = {keymaps._old_vae_attention(k): v for k, v in state.items()}
    levels = keymaps.diffusers_vae_levels(state)
    ch = state["encoder.conv_in.weight"].shape[0]
    mult = tuple(state[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0] // ch for i in range(levels))
    blocks = len({m[1] for k in state if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))})
    skeleton = VAEConfig(in_channels=state["encoder.conv_in.weight"].shape[1], out_channels=state["decoder.conv_out.weight"].shape[0],
                         ch=ch, ch_mult=mult, num_res_blocks=blocks, z_channels=state["decoder.conv_in.weight"].shape[1],
                         embed_dim=state["post_quant_conv.weight"].shape[0])
    with torch.device("meta"):
        shapes = {k: v.ndim for k, v in AutoencoderKL(skeleton).state_dict().items()}
    return keymaps.vae_from_diffusers(state, shapes)


def load_vae_file(path: Path) -> dict[str, torch.Tensor]:
    """A standalone VAE (``--vae``): original layout (bare or ``first_stage_model.``) or diffusers layout."""
    path = Path(path).expanduser()
    if path.is_dir():
        state, _, file = _folder_part(path.parent, path.name) if (path / "config.json").exists() else _folder_part(path, "vae")
    else:
        if not path.exists():
            raise UserError(f"no VAE file at {path}")
        state, _ = read_tensors(path)
        file = path
    check_finite(state, file)
    if any(k.startswith(VAE_PREFIX) for k in state):
        state = split_prefix(state, VAE_PREFIX)
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in state:
        state = vae_from_diffusers_layout(state)
    if "encoder.down.0.block.0.conv1.weight" not in state:
        raise ModelFileError(f"{file} does not look like a Stable Diffusion VAE (no encoder/decoder tensors)")
    return state
