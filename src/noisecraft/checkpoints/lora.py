"""LoRA files (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") merged into a model.

A LoRA file stores, per adapted layer, a pair of low-rank factors ``down`` [r, in] and ``up``
[out, r] (or 4-d convolution kernels) and optionally ``alpha``; the layer's weight becomes

    W + scale * (alpha / r) * up @ down

(alpha defaults to r). Two naming schemes are read:

* kohya / AUTOMATIC1111: ``lora_unet_<path>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``,
  with ``<path>`` the module path with dots as underscores, in diffusers' names (SD 1.x/2.x) or the
  original names (SDXL); text encoders as ``lora_te_`` (SD 1.x/2.x), ``lora_te1_`` / ``lora_te2_``
  (SDXL);
* diffusers / PEFT: ``unet.<diffusers path>.lora_A.weight`` / ``lora_B.weight`` (or
  ``.lora.down.weight`` / ``.lora.up.weight``), ``text_encoder[_2].<path>...``.

SD3's and FLUX's transformers take both too: kohya's ``lora_unet_double_blocks_0_img_attn_qkv`` names our
(original) layers, diffusers' ``transformer.transformer_blocks.0.attn.to_q`` names a part of one (the rows of the
fused q/k/v, or of FLUX's fused single-block input, that the key map splits off); `transformer_targets` finds
those rows by running the key map itself over row numbers, so the LoRA targets and the weight converter agree.

Merging changes the weights in place, so sampling costs nothing extra; the original tensors of every
touched layer are kept so that `LoraStack.unload` restores the model exactly. Several files stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError, UserError
from . import keymaps
from .io import model_hash, read_tensors


@dataclass
class LoraPair:
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    def delta(self, shape: torch.Size) -> torch.Tensor:
        """up @ down * alpha / r, shaped like the target weight."""
        rank = self.down.shape[0]
        product = self.up.flatten(1).float() @ self.down.flatten(1).float()  # [out, in * kh * kw]
        scale = self.alpha / rank if self.alpha is not None else 1.0
        return (product * scale).reshape(shape)


def read_lora_file(path: str | Path) -> tuple[dict[str, LoraPair], dict[str, str]]:
    """Read a LoRA safetensors file into {normalised layer name: LoraPair}.

    Layer names come back as ``unet:<underscored path>``, ``te1:<...>`` or ``te2:<...>``, with the file's
    safetensors metadata (a fine-tuned subject's trigger words, kohya's ss_* entries).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"no LoRA file at {path}")
    tensors, metadata = read_tensors(path)
    pairs: dict[str, dict] = {}
    for key, tensor in tensors.items():
        parsed = _parse_key(key)
        if parsed is None:
            continue
        layer, role = parsed
        pairs.setdefault(layer, {})[role] = tensor
    out = {}
    for layer, parts in pairs.items():
        if "down" not in parts or "up" not in parts:
            continue
        alpha = parts.get("alpha")
        out[layer] = LoraPair(parts["down"], parts["up"], float(alpha) if alpha is not None else None)
    if not out:
        kinds = sorted({k.split(".")[-2] if "." in k else k for k in list(tensors)[:50]})
        raise ModelFileError(f"{path} holds no LoRA layers noisecraft can read (it reads kohya/A1111 lora_up/lora_down "
                             f"and diffusers/PEFT lora_A/lora_B files; found names like {', '.join(kinds[:4])})")
    return out, metadata or {}


_ROLES = {"lora_down.weight": "down", "lora_up.weight": "up", "lora_A.weight": "down", "lora_B.weight": "up",
          "lora.down.weight": "down", "lora.up.weight": "up", "alpha": "alpha"}
_TEXT_PREFIXES = {"lora_te_": "te1", "lora_te1_": "te1", "lora_te2_": "te2"}
_DIFFUSERS_PARTS = {"unet": "unet", "transformer": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}


def _parse_key(key: str) -> tuple[str, str] | None:
    for suffix, role in _ROLES.items():
        if key.endswith("." + suffix):
            stem = key[: -len(suffix) - 1]
            break
    else:
        return None
    if stem.startswith("lora_unet_"):
        return f"unet:{stem[len('lora_unet_'):]}", role
    for prefix, part in _TEXT_PREFIXES.items():
        if stem.startswith(prefix):
            return f"{part}:{stem[len(prefix):]}", role
    head, _, rest = stem.partition(".")
    if head in _DIFFUSERS_PARTS:
        # PEFT names carry an adapter name ("...to_q.lora_A.default_0.weight" is not used in files)
        return f"{_DIFFUSERS_PARTS[head]}:{rest.replace('.', '_')}", role
    return None


def unet_targets(unet: nn.Module, num_res_blocks: int) -> dict[str, nn.Module]:
    """Every LoRA-able layer of our UNet under its underscored original and diffusers names."""
    targets = {}
    for name, module in unet.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and name:
            targets[name.replace(".", "_")] = module
            diffusers_name = keymaps.unet_ldm_to_diffusers(name + ".weight", num_res_blocks)[: -len(".weight")]
            targets[diffusers_name.replace(".", "_")] = module
    return targets


def transformer_targets(net: nn.Module) -> dict[str, tuple[nn.Module, torch.Tensor | None]]:
    """Every linear layer of an SD3 / FLUX transformer under its underscored original name (the whole weight) and
    under each diffusers name it is split into (those rows of the weight, as the key map splits them)."""
    from ..models.flux import Flux
    from ..models.zimage import ZImage
    from .transformer_keys import flux_to_diffusers, mmdit_to_diffusers, zimage_to_diffusers

    c = net.config
    to_diffusers = (lambda s: flux_to_diffusers(s, c.hidden)) if isinstance(net, Flux) else zimage_to_diffusers \
        if isinstance(net, ZImage) else (lambda s: mmdit_to_diffusers(s, c.depth))
    targets = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            targets[name.replace(".", "_")] = (module, None)
            rows = torch.arange(module.out_features)[:, None]
            for theirs, part in to_diffusers({f"{name}.weight": rows}).items():
                targets[theirs.removesuffix(".weight").replace(".", "_")] = (module, part[:, 0])
    return targets


def lora_targets(network: nn.Module, num_res_blocks: int | None, text_encoder=None) -> dict[str, dict]:
    """Every layer a LoRA file may name, per part (``unet``, ``te1``, ``te2``), under each name it may use;
    `num_res_blocks` None: the network is an SD3 / FLUX transformer."""
    targets = {"unet": unet_targets(network, num_res_blocks) if num_res_blocks is not None else transformer_targets(network)}
    for name, module in text_lora_targets(text_encoder).items():
        part, rest = ("te2", name[len("lora_te2_"):]) if name.startswith("lora_te2_") else \
                     ("te1", re.sub(r"^lora_te1?_", "", name))
        targets.setdefault(part, {})[rest] = module
        # files saved from transformers 5's CLIP, which has no text_model level, name the same layers without it
        targets[part].setdefault(rest.removeprefix("text_model_"), module)
    return targets


def text_lora_targets(text_encoder) -> dict[str, nn.Linear]:
    """A text encoder's LoRA-able layers by kohya name (``lora_te_text_model_encoder_layers_0_self_attn_q_proj``,
    ``lora_te1_...`` / ``lora_te2_...`` for SDXL), from where its `lora_roots` say LoRA files adapt it."""
    targets = {}
    for prefix, (root, under) in getattr(text_encoder, "lora_roots", dict)().items():
        for path, module in root.named_modules():
            if isinstance(module, nn.Linear) and path.startswith(under):
                targets[f"{prefix}_{path.replace('.', '_')}"] = module
    return targets


@dataclass
class LoraStack:
    """The LoRA files merged into a pipeline's networks, and the original weights to undo them."""

    loaded: list[tuple[str, float, str]] = field(default_factory=list)  # (name, scale, A1111 short hash)
    triggers: list[str] = field(default_factory=list)  # the words that call a fine-tuned subject (`noisecraft finetune`)
    _backup: dict[int, tuple[nn.Module, torch.Tensor]] = field(default_factory=dict)

    def apply(self, path: str | Path, scale: float, targets: dict[str, dict[str, nn.Module]]) -> int:
        """Merge one file at `scale`; returns how many layers it changed. Unknown layers are an error."""
        pairs, metadata = read_lora_file(path)
        missing, plan = [], []
        for layer, pair in pairs.items():
            part, _, name = layer.partition(":")
            target = targets.get(part, {}).get(name)
            module, rows = target if isinstance(target, tuple) else (target, None)
            if module is None:
                missing.append(layer)
            elif pair.up.shape[0] * pair.down[0].numel() != (module.weight[rows] if rows is not None else module.weight).numel():
                raise UserError(f"{Path(path).name} does not fit this model: layer {layer} has the wrong size "
                                "(is it made for another Stable Diffusion family?)")
            elif hasattr(module, "parametrizations"):
                raise UserError(f"{Path(path).name} cannot be merged into weights stored in fp8 or GGUF blocks; "
                                "load the 16-bit model to use LoRA files")
            else:
                plan.append((module, rows, pair))
        if missing:
            part = missing[0].partition(":")[0]
            what = "this model's UNet" if part == "unet" else "this model's text encoder"
            raise UserError(f"{Path(path).name} does not fit this model: {len(missing)} of its layers are not in {what} "
                            f"(first: {missing[0]}); is it made for another Stable Diffusion family?")
        with torch.no_grad():
            for module, rows, pair in plan:
                weight = module.weight
                self._backup.setdefault(id(module), (module, weight.detach().to('cpu', copy=True)))
                if rows is None:
                    weight.add_((scale * pair.delta(weight.shape)).to(weight.device, weight.dtype))
                else:
                    delta = scale * pair.delta(torch.Size((len(rows), weight.shape[1])))
                    weight.index_add_(0, rows.to(weight.device), delta.to(weight.device, weight.dtype))
        self.loaded.append((Path(path).stem, scale, model_hash(path, digits=12)))
        trigger = metadata.get("noisecraft_trigger", "").strip()
        if trigger:
            self.triggers.append(trigger)
        return len(plan)

    def unload(self) -> None:
        """Put back every weight a LoRA touched."""
        with torch.no_grad():
            for module, original in self._backup.values():
                module.weight.copy_(original)
        self._backup.clear()
        self.loaded.clear()
        self.triggers.clear()


def parse_lora_argument(text: str) -> tuple[str, float]:
    """``FILE`` or ``FILE:SCALE`` (a Windows drive letter is not a scale)."""
    match = re.fullmatch(r"(.+?)(?::(-?\d+(?:\.\d+)?))?", text.strip())
    path, scale = match.group(1), match.group(2)
    return path, float(scale) if scale is not None else 1.0
