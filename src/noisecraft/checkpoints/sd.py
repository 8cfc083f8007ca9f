"""Stable Diffusion checkpoints as people have them: single files and diffusers folders.

A single file in the original layout holds ``model.diffusion_model.*`` (UNet),
``first_stage_model.*`` (VAE) and the text encoder(s) under ``cond_stage_model.*`` (SD 1.x/2.x)
or ``conditioner.embedders.{0,1}.*`` (SDXL). A diffusers folder holds ``unet/``, ``vae/``,
``text_encoder[_2]/``, ``tokenizer[_2]/`` and ``scheduler/`` with their own names
(`keymaps` renames them to the original layout, so one code path serves both). What the weights
say about the model (family, sizes, prediction) is `sd_config`'s.

Safety: tensors are read from safetensors; a legacy ``.ckpt``/``.pt`` (a pickle) only through
``torch.load(weights_only=True)``, which unpickles tensors and plain containers and refuses
anything else. The format is decided by the file's first bytes, never by its extension.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelFileError, UserError
from ..models.unet import UNet
from ..models.vae import AutoencoderKL, VAEConfig
from ..text.clip import FAMILIES, CLIPTextConfig, SDTextEncoder, build_text_tower, config_from_state, text_family
from ..text.clip_tokenizer import CLIPTokenizer, read_pad_token
from . import keymaps
from .config import ModelConfig
from .io import check_finite, header_tensors, read_safetensors_header, read_tensors, split_prefix, weights_file
from .sd_config import family_of, model_config, prediction_of, unet_config_from_diffusers, unet_config_of, vae_config_of

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")
BARE_TRANSFORMER = ("double_blocks.0.", "joint_blocks.0.", "noise_refiner.0.")  # FLUX / SD3 / Z-Image, without model.diffusion_model.
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
TEXT_WEIGHTS = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")


@dataclass
class SDCheckpoint:
    """A Stable Diffusion model read from disk, ready to build its networks."""

    config: ModelConfig
    parts: dict[str, dict[str, torch.Tensor]]  # "unet", "vae": original layout
    file: Path  # the file that names and hashes the model
    family: str
    text_state: dict[str, torch.Tensor] = field(default_factory=dict)  # single files: the text encoder tensors
    folder: Path | None = None  # diffusers folders: where text_encoder/ and tokenizer/ live

    @property
    def inpainting(self) -> bool:
        return self.config.inpainting


# -- recognising -----------------------------------------------------------------------------------
def is_sd_single_file(fmt: str, header: dict | None) -> bool:
    """Whether a sniffed file is a Stable Diffusion single file: a pickle, or safetensors with UNet tensors (or an
    SD3 / FLUX transformer's, bare as Black Forest Labs ships FLUX: `flow_files.transformer_family`)."""
    if fmt not in ("safetensors", "gguf"):
        return fmt in ("zip-pickle", "pickle")
    return any(k.startswith(UNET_PREFIX) or k.startswith(BARE_TRANSFORMER) for k in header)


def is_diffusers_folder(path: Path) -> bool:
    """A diffusers model folder: ``unet/`` (SD 1.x/2.x/XL) or ``transformer/`` (SD3, FLUX) beside its ``vae/``."""
    return path.is_dir() and ((path / "unet").is_dir() or (path / "transformer").is_dir()) and \
        ((path / "model_index.json").exists() or (path / "vae").is_dir())


def component_file(directory: Path, text: bool = False) -> Path:
    """The file that names a component folder's weights (``unet/``, ``transformer/``; `text`: ``text_encoder/``):
    the weights file, or the index of its shards."""
    names = TEXT_WEIGHTS if text else DIFFUSERS_WEIGHTS
    index = directory / ("model.safetensors.index.json" if text else "diffusion_pytorch_model.safetensors.index.json")
    if index.is_file() and not any((directory / name).is_file() for name in names):
        return index
    return weights_file(directory, names, () if text else ("*.safetensors", "*.bin"))


# -- loading ---------------------------------------------------------------------------------------
def load_single_file(file: Path, name: str, *, fmt: str, header: dict | None, prediction: str | None = None) -> SDCheckpoint:
    state, metadata = read_tensors(file, fmt, header)
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
                          prediction_of(family, metadata, unet_config, unet, prediction), name, metadata)
    return SDCheckpoint(config, {"unet": unet, "vae": vae}, file, family, text_state=text)


def read_json(path: Path) -> dict:
    """A folder's JSON config ({} when there is none)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        raise ModelFileError(f"{path} is not valid JSON; copy the folder again") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a JSON object; copy the folder again")
    return data


def folder_weights(directory: Path, text: bool = False, meta: bool = False) -> tuple[dict[str, torch.Tensor], Path]:
    """The weights of one component folder (``unet/``, ``transformer/``, ``text_encoder/``): one file, or the
    shards its safetensors index names; and the file that names them (the weights file or the index).
    `meta`: the tensors' names, shapes and dtypes only, from the safetensors headers."""
    read = (lambda f: (header_tensors(read_safetensors_header(f)), {})) if meta else read_tensors
    if not directory.is_dir():
        raise ModelFileError(f"{directory.parent} has no {directory.name}/ folder; a diffusers model needs one")
    file = component_file(directory, text)
    if not file.name.endswith(".index.json"):
        return read(file)[0], file
    try:
        files = sorted(set(read_json(file)["weight_map"].values()))
    except (KeyError, TypeError, AttributeError):
        raise ModelFileError(f"{file} is not a safetensors index; copy the folder again") from None
    if any("/" in f or "\\" in f or f.startswith(".") for f in files):
        raise ModelFileError(f"{file} names files outside its folder; noisecraft does not follow it")
    return {k: v for f in files for k, v in read(directory / f)[0].items()}, file


def _folder_part(directory: Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """The weights and config.json of one diffusers component folder (``unet/``, ``vae/``)."""
    state, file = folder_weights(directory)
    check_finite(state, file)
    return state, read_json(directory / "config.json"), file


def load_diffusers_folder(folder: Path, name: str, *, prediction: str | None = None) -> SDCheckpoint:
    unet_d, unet_json, unet_file = _folder_part(folder / "unet")
    vae_d, vae_json, _ = _folder_part(folder / "vae")
    unet_config = unet_config_from_diffusers(unet_json)
    with torch.device("meta"):
        ldm_keys = UNet(unet_config).state_dict().keys()
    try:
        unet = keymaps.unet_from_diffusers(unet_d, ldm_keys)
    except KeyError as error:
        raise ModelFileError(f"{unet_file} does not match its config.json ({error.args[0]})") from None
    family = family_of(unet)
    vae = vae_from_diffusers_layout(vae_d)
    scheduler = read_json(folder / "scheduler" / "scheduler_config.json")
    declared = prediction or scheduler.get("prediction_type")
    config = model_config(family, unet_config, vae_config_of(vae, family, vae_json), prediction_of(family, {}, unet_config, unet, declared), name)
    return SDCheckpoint(config, {"unet": unet, "vae": vae}, unet_file, family, folder=folder)


def vae_from_diffusers_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers VAE state dict to the original layout, using a skeleton of the right size."""
    state = {keymaps.old_vae_attention(k): v for k, v in state.items()}
    levels = keymaps.diffusers_vae_levels(state)
    ch = state["encoder.conv_in.weight"].shape[0]
    mult = tuple(state[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0] // ch for i in range(levels))
    blocks = len({m[1] for k in state if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))})
    skeleton = VAEConfig(in_channels=state["encoder.conv_in.weight"].shape[1], out_channels=state["decoder.conv_out.weight"].shape[0],
                         ch=ch, ch_mult=mult, num_res_blocks=blocks, z_channels=state["decoder.conv_in.weight"].shape[1],
                         embed_dim=state["post_quant_conv.weight"].shape[0] if "post_quant_conv.weight" in state else
                         state["decoder.conv_in.weight"].shape[1], use_quant_conv="post_quant_conv.weight" in state)
    with torch.device("meta"):
        shapes = {k: v.ndim for k, v in AutoencoderKL(skeleton).state_dict().items()}
    return keymaps.vae_from_diffusers(state, shapes)


def load_vae_file(path: Path) -> dict[str, torch.Tensor]:
    """A standalone VAE (``--vae``): original layout (bare or ``first_stage_model.``) or diffusers layout."""
    path = Path(path).expanduser()
    if path.is_dir():
        state, _, file = _folder_part(path if (path / "config.json").exists() else path / "vae")
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


# -- text encoders ---------------------------------------------------------------------------------
def text_encoder_from_single_file(state: dict[str, torch.Tensor], family: str, *, device="cpu",
                                  dtype=torch.float32) -> SDTextEncoder:
    """The text encoder(s) of an original-layout checkpoint (the whole state dict; other keys are ignored).

    No copy is made where `state`'s tensors already have the asked dtype and device: the encoder's
    parameters then share their memory (a checkpoint is not held twice).
    """
    family = text_family(family)
    encoders = {}
    for part in FAMILIES[family]:
        prefix = next((p for p in part.single_file if any(k.startswith(p) for k in state)), None)
        if prefix is None:
            raise ModelFileError(f"the checkpoint has no text encoder weights ({part.single_file[0]}*) for a {family} model; "
                                 "it may be a UNet-only file or of another family")
        sub = keymaps.clip_text_state(state, prefix)
        if not part.projection:
            sub.pop("text_projection.weight", None)
        config = config_from_state(sub, part.activation)
        if part.drop_last_layer:
            config.layers -= 1
            sub = {k: v for k, v in sub.items() if not k.startswith(f"text_model.encoder.layers.{config.layers}.")}
        encoders[part.name] = build_text_tower(config, sub, device, dtype, f"{family} text encoder ({prefix}*)")
    return SDTextEncoder(family, encoders, CLIPTokenizer.bundled(), {p.name: p.pad for p in FAMILIES[family]})


def text_encoder_from_folder(folder: str | Path, family: str, *, device="cpu", dtype=torch.float32) -> SDTextEncoder:
    """The text encoder(s) of a diffusers folder: text_encoder[_2]/ (config.json + weights), tokenizer[_2]/."""
    folder, family = Path(folder), text_family(family)
    encoders, pads, tokenizer = {}, {}, None
    for part in FAMILIES[family]:
        sub = folder / part.name
        config_file = sub / "config.json"
        if not config_file.is_file():
            raise ModelFileError(f"{folder} has no {part.name}/config.json; a {family} diffusers folder needs it")
        try:
            c = json.loads(config_file.read_text(encoding="utf-8"))
            config = CLIPTextConfig(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"],
                                    c["intermediate_size"], c["max_position_embeddings"], c.get("hidden_act", "quick_gelu"),
                                    c.get("layer_norm_eps", 1e-5),
                                    c.get("projection_dim") if "WithProjection" in str(c.get("architectures")) else None)
        except (ValueError, KeyError, TypeError) as error:
            raise ModelFileError(f"{config_file} is not a CLIP text config ({error}); copy the folder again") from None
        state = keymaps.hf_layout(folder_weights(sub, text=True)[0])
        encoders[part.name] = build_text_tower(config, state, device, dtype, f"{family} text encoder in {sub}")
        tok_dir = folder / part.name.replace("text_encoder", "tokenizer")
        part_tokenizer = CLIPTokenizer.from_folder(tok_dir) if tok_dir.is_dir() else CLIPTokenizer.bundled()
        if tokenizer is not None and part_tokenizer.vocab != tokenizer.vocab:
            raise ModelFileError(f"{folder}'s tokenizers have different vocabularies; noisecraft needs one shared CLIP vocabulary")
        tokenizer = tokenizer or part_tokenizer
        pads[part.name] = (read_pad_token(tok_dir) if tok_dir.is_dir() else None) or part.pad
    return SDTextEncoder(family, encoders, tokenizer, pads)

