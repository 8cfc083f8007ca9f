"""ControlNet files: the original single files (``control_model.*`` keys, lllyasviel's and A1111's
``control_v11p_sd15_canny.safetensors``; also without the prefix) and diffusers folders (``config.json`` +
``diffusion_pytorch_model.safetensors``, or such a file with its ``config.json`` beside it),
read through the same safe loader as model files (safetensors, or legacy files as weights only).

    net = load_controlnet("control_v11p_sd15_canny.safetensors", device, dtype)
    net.family, net.name, net.hash, net.module   # sd1 / sd2 / sdxl; the `models.controlnet.ControlNet`
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelFileError, UserError
from ..models.controlnet import ControlNet
from ..models.unet import UNetConfig
from . import keymaps
from .io import check_finite, model_hash, read_tensors
from .load import build_module
from .sd_config import family_of, unet_config_from_diffusers, unet_config_of

DIFFUSERS_MARK = "controlnet_cond_embedding.conv_in.weight"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class ControlNetConfig:
    unet: UNetConfig
    hint_channels: int = 3
    embedding: tuple[int, ...] = (16, 32, 96, 256)


@dataclass
class LoadedControlNet:
    module: ControlNet
    family: str
    name: str
    hash: str  # A1111's short hash, shown as "name [hash]"

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]"


def build(config: ControlNetConfig) -> ControlNet:
    """The ControlNet module of `config` (random weights; `load_controlnet` gives it a file's)."""
    return ControlNet(config.unet, config.hint_channels, config.embedding)


def hint_convs(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    indices = sorted(int(m[1]) for k in state if (m := re.fullmatch(r"input_hint_block\.(\d+)\.weight", k)))
    return [state[f"input_hint_block.{i}.weight"] for i in indices]


def config_of(state: dict[str, torch.Tensor]) -> tuple[ControlNetConfig, str]:
    """The config and family of an original-layout ControlNet state dict."""
    if "input_blocks.0.0.weight" not in state or "middle_block_out.0.weight" not in state:
        raise ModelFileError("the file holds no ControlNet (no input_blocks / middle_block_out weights)")
    convs = hint_convs(state)
    if len(convs) < 2:
        raise ModelFileError("the ControlNet has no input_hint_block; the file is incomplete")
    widths = []
    for conv in convs[:-1]:
        if not widths or widths[-1] != conv.shape[0]:
            widths.append(conv.shape[0])
    family = family_of(state)
    unet = unet_config_of(state, family, encoder_only=True)
    return ControlNetConfig(unet, convs[0].shape[1], tuple(widths)), family


def diffusers_names(config: ControlNetConfig) -> dict[str, str]:
    """original name -> diffusers name, for every parameter of a ControlNet of `config`."""
    with torch.device("meta"):
        keys = build(config).state_dict().keys()
    convs = sorted({int(k.split(".")[1]) for k in keys if k.startswith("input_hint_block.")})
    hint = {convs[0]: "controlnet_cond_embedding.conv_in", convs[-1]: "controlnet_cond_embedding.conv_out"}
    hint |= {index: f"controlnet_cond_embedding.blocks.{j}" for j, index in enumerate(convs[1:-1])}
    names = {}
    for key in keys:
        head, _, rest = key.partition(".")
        if head == "input_hint_block":
            index, _, leaf = rest.partition(".")
            names[key] = f"{hint[int(index)]}.{leaf}"
        elif head == "zero_convs":
            index, _, leaf = rest.partition(".")
            names[key] = f"controlnet_down_blocks.{index}.{leaf.removeprefix('0.')}"
        elif head == "middle_block_out":
            names[key] = f"controlnet_mid_block.{rest.removeprefix('0.')}"
        else:
            names[key] = keymaps.unet_ldm_to_diffusers(key, config.unet.num_res_blocks)
    return names


def from_diffusers(state: dict[str, torch.Tensor], config: ControlNetConfig) -> dict[str, torch.Tensor]:
    """A diffusers-named ControlNet state dict in the original layout."""
    inverse = {v: k for k, v in diffusers_names(config).items()}
    try:
        return keymaps.rename(state, inverse)
    except KeyError as error:
        raise ModelFileError(f"the ControlNet's weights do not match its config ({error.args[0]})") from None


def _config_from_diffusers(config: dict) -> ControlNetConfig:
    embedding = tuple(config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256))
    return ControlNetConfig(unet_config_from_diffusers(config), int(config.get("conditioning_channels", 3)), embedding)


def read_controlnet(path: str | Path) -> tuple[ControlNetConfig, dict[str, torch.Tensor], str, Path]:
    """(config, original-layout weights, family, the weights file) of a ControlNet file or diffusers folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        file = next((path / n for n in WEIGHT_NAMES if (path / n).is_file()), None)
        if file is None:
            raise UserError(f"{path} has no ControlNet weights ({WEIGHT_NAMES[0]})")
        try:
            config_json = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            raise ModelFileError(f"{path}/config.json is missing or not JSON; copy the folder again") from None
        state, _ = read_tensors(file)
        config = _config_from_diffusers(config_json)
        state = from_diffusers(state, config)
    elif path.is_file():
        file = path
        state, _ = read_tensors(file)
        if DIFFUSERS_MARK in state:
            beside = path.with_name("config.json")
            if not beside.is_file():  # diffusers' names: the heads and block kinds are in its config, not the weights
                raise ModelFileError(f"{path} is a ControlNet in diffusers' names; put its config.json beside it")
            try:
                config_json = json.loads(beside.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise ModelFileError(f"{beside} is not valid JSON; copy it again") from None
            config = _config_from_diffusers(config_json)
            state = from_diffusers(state, config)
        else:
            state = {k.removeprefix("control_model."): v for k, v in state.items() if not k.startswith(("lora_", "cond_stage_model."))}
            config, _ = config_of(state)
    else:
        raise UserError(f"no ControlNet file at {path}")
    check_finite(state, file)
    return config, state, family_of(state), file


def load_controlnet(path: str | Path, device, dtype) -> LoadedControlNet:
    config, state, family, file = read_controlnet(path)
    module = build_module(build, config, state, device, dtype)
    name = Path(path).name if Path(path).is_dir() else Path(path).stem
    return LoadedControlNet(module, family, name, model_hash(file))


__all__ = ["ControlNetConfig", "LoadedControlNet", "build", "config_of", "diffusers_names", "from_diffusers", "load_controlnet",
           "read_controlnet"]
