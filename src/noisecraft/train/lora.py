"""LoRA adapters to train (Hu et al. 2021), and the kohya / AUTOMATIC1111 file they are saved as.

    adapters = add_adapters(unet, rank=16, alpha=16)        # kohya's layer set: attention, feed-forward, projections
    ... train only `adapter_parameters(adapters)` ...
    save_kohya(path, adapters, family="sd1", name="acme storefront")

A layer's output becomes ``base(x) + (alpha / rank) * up(down(x))``, `up` starting at zero so an untrained
adapter changes nothing. The file is what `checkpoints.lora` reads and what A1111, ComfyUI and diffusers'
`load_lora_weights` load: ``lora_unet_<path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, the path
in diffusers' names for SD 1.x/2.x and in the original names for SDXL (as kohya's sd-scripts write them),
with kohya's ``ss_*`` and ``modelspec.*`` metadata.
"""

from __future__ import annotations

import json
import math
import time

import torch
from safetensors.torch import load_file, save
from torch import nn

from ..checkpoints import keymaps
from ..errors import UserError
from ..files import replacing

# kohya's default UNet layer set: in every transformer block the attention projections and feed-forward,
# and the transformer's own in/out projections
LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
          "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
# kohya's conv set (LoCon, `conv_dim`): the residual blocks' 3x3 convolutions and shortcuts, down- and upsamplers
CONV_LAYERS = ("in_layers.2", "out_layers.3", "skip_connection", ".op", ".conv")
# the text encoders' attention and MLP projections (CLIP: q/k/v/out_proj, fc1/fc2; MiniLM: BERT's dense layers)
TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "query", "key", "value", "dense")
BASE_VERSIONS = {"sd1": ("sd_v1", "stable-diffusion-v1/lora"), "sd2": ("sd_v2", "stable-diffusion-v2-512/lora"),
                 "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"), "noisecraft": ("noisecraft", "noisecraft/lora")}


class LoraLayer(nn.Module):
    """`base` (a Linear or Conv2d, frozen) plus a trainable low-rank update ``(alpha / rank) * up(down(x))``."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.base, self.rank, self.alpha, self.enabled = base, rank, float(alpha), True
        kind = dict(device=base.weight.device, dtype=dtype or base.weight.dtype)  # float32 adapters on a half model
        if isinstance(base, nn.Conv2d):
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False, **kind)
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False, **kind)
        else:
            self.down = nn.Linear(base.in_features, rank, bias=False, **kind)
            self.up = nn.Linear(rank, base.out_features, bias=False, **kind)
        start = torch.empty(self.down.weight.shape)  # drawn on the CPU, so a seed gives the same start on any device
        nn.init.kaiming_uniform_(start, a=math.sqrt(5), generator=generator)
        with torch.no_grad():
            self.down.weight.copy_(start)
        nn.init.zeros_(self.up.weight)
        base.requires_grad_(False)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.enabled:  # the base model exactly (before/after pictures)
            return out
        return out + (self.up(self.down(x.to(self.down.weight.dtype))) * self.scale).to(out.dtype)


def add_adapters(unet: nn.Module, rank: int = 16, alpha: float = 16.0, layers=LAYERS, seed: int = 0,
                 under: str = "", dtype: torch.dtype | None = None) -> dict[str, LoraLayer]:
    """Wrap every layer of `unet` whose path ends in one of `layers` (and starts with `under`) in a `LoraLayer`
    (`down` drawn from a generator seeded by `seed`, so the same run starts the same); {path: adapter}."""
    generator = torch.Generator().manual_seed(seed)
    found = {name: module for name, module in unet.named_modules()
             if isinstance(module, (nn.Linear, nn.Conv2d)) and name.startswith(under) and ("." + name).endswith(tuple(layers))}
    adapters = {}
    for name, module in found.items():
        adapters[name] = LoraLayer(module, rank, alpha, generator, dtype)
        _put(unet, name, adapters[name])
    return adapters


def add_text_adapters(text_encoder, rank: int = 16, alpha: float = 16.0, seed: int = 0,
                      dtype: torch.dtype | None = None) -> dict[str, tuple[nn.Module, dict]]:
    """Adapters on every text encoder's attention and MLP layers: {kohya prefix: (encoder, {path: adapter})},
    the prefix ``lora_te`` (SD 1.x/2.x, the built-in model) or ``lora_te1`` / ``lora_te2`` (SDXL)."""
    roots = getattr(text_encoder, "lora_roots", None)
    if roots is None:
        raise UserError("this model's text encoder takes no LoRA adapters")
    return {prefix: (module, add_adapters(module, rank, alpha, TEXT_LAYERS, seed + 1 + k, under, dtype))
            for k, (prefix, (module, under)) in enumerate(roots().items())}


def adapter_parameters(adapters: dict[str, LoraLayer]) -> list[nn.Parameter]:
    return [p for adapter in adapters.values() for p in (adapter.down.weight, adapter.up.weight)]


def remove_adapters(unet: nn.Module, adapters: dict[str, LoraLayer]) -> None:
    """Put the base layers back (the adapters' weights stay in `adapters`)."""
    for name, adapter in adapters.items():
        _put(unet, name, adapter.base)


def _put(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at `path` (a Sequential's item by its index)."""
    parent_name, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if child.isdigit():
        parent[int(child)] = module
    else:
        setattr(parent, child, module)


def kohya_name(path: str, family: str, num_res_blocks: int) -> str:
    """The kohya key stem of our UNet layer `path`: diffusers' names for SD 1.x/2.x, the original ones for SDXL."""
    if family in ("sd1", "sd2"):
        path = keymaps.unet_ldm_to_diffusers(path + ".weight", num_res_blocks)[: -len(".weight")]
    return "lora_unet_" + path.replace(".", "_")


def stems(adapters: dict[str, LoraLayer], family: str, num_res_blocks: int, text: dict | None = None) -> dict[str, LoraLayer]:
    """{kohya key stem: adapter} for the UNet's adapters and the text encoders' (`add_text_adapters`)."""
    named = {kohya_name(path, family, num_res_blocks): adapter for path, adapter in adapters.items()}
    for prefix, (_, layers) in (text or {}).items():
        named |= {f"{prefix}_{path.replace('.', '_')}": adapter for path, adapter in layers.items()}
    return named


def kohya_tensors(adapters: dict[str, LoraLayer], family: str, num_res_blocks: int, text: dict | None = None) -> dict[str, torch.Tensor]:
    """The adapters as kohya tensors (float32 on the CPU)."""
    tensors = {}
    for stem, adapter in stems(adapters, family, num_res_blocks, text).items():
        tensors[f"{stem}.lora_down.weight"] = adapter.down.weight.detach().float().cpu().contiguous()
        tensors[f"{stem}.lora_up.weight"] = adapter.up.weight.detach().float().cpu().contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(adapter.alpha)
    return tensors


def restore(path, adapters: dict[str, LoraLayer], family: str, num_res_blocks: int, text: dict | None = None) -> None:
    """Load a kohya file this module wrote back into the same adapters (the best checkpoint, after training)."""
    tensors = load_file(str(path))
    with torch.no_grad():
        for stem, adapter in stems(adapters, family, num_res_blocks, text).items():
            adapter.down.weight.copy_(tensors[f"{stem}.lora_down.weight"])
            adapter.up.weight.copy_(tensors[f"{stem}.lora_up.weight"])


def peft_tensors(adapters: dict[str, LoraLayer], num_res_blocks: int, text: dict | None = None) -> dict[str, torch.Tensor]:
    """The adapters in diffusers/PEFT names (``unet.<diffusers path>.lora_A.weight`` / ``lora_B.weight``,
    ``text_encoder[_2].<path>...``). PEFT files keep no alpha (its config does, and loaders assume alpha =
    rank), so ``alpha / rank`` is folded into ``lora_B``: the same update either way."""
    parts = {"lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2"}
    named = {"unet." + keymaps.unet_ldm_to_diffusers(path + ".weight", num_res_blocks)[: -len(".weight")]: adapter
             for path, adapter in adapters.items()}
    for prefix, (_, layers) in (text or {}).items():
        named |= {f"{parts[prefix]}.{path}": adapter for path, adapter in layers.items()}
    tensors = {}
    for name, adapter in named.items():
        tensors[f"{name}.lora_A.weight"] = adapter.down.weight.detach().float().cpu().contiguous()
        tensors[f"{name}.lora_B.weight"] = (adapter.up.weight.detach().float() * adapter.scale).cpu().contiguous()
    return tensors


def kohya_metadata(adapters: dict[str, LoraLayer], family: str, name: str, extra: dict | None = None) -> dict[str, str]:
    """kohya's ``ss_*`` and the model spec's ``modelspec.*`` entries, which A1111 and ComfyUI show."""
    first = next(iter(adapters.values()))
    version, architecture = BASE_VERSIONS.get(family, BASE_VERSIONS["noisecraft"])
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(first.rank),
                "ss_network_alpha": f"{first.alpha:g}", "ss_base_model_version": version, "ss_output_name": name,
                "ss_training_finished_at": str(int(time.time())), "ss_training_comment": "made by noisecraft finetune",
                "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
                "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts", "modelspec.title": name,
                "modelspec.date": time.strftime("%Y-%m-%d")}
    return metadata | {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra or {}).items()}


def save_kohya(path, adapters: dict[str, LoraLayer], family: str, num_res_blocks: int, name: str,
               extra: dict | None = None, text: dict | None = None):
    """Write the adapters (and the text encoders' `text`) as a kohya LoRA file, atomically."""
    tensors = kohya_tensors(adapters, family, num_res_blocks, text)
    with replacing(path) as handle:
        handle.write(save(tensors, metadata=kohya_metadata(adapters, family, name, extra)))
    return path


def save_peft(path, adapters: dict[str, LoraLayer], num_res_blocks: int, text: dict | None = None):
    """Write the diffusers/PEFT copy (``pipe.load_lora_weights(folder)`` reads it as
    ``pytorch_lora_weights.safetensors``), atomically."""
    with replacing(path) as handle:
        handle.write(save(peft_tensors(adapters, num_res_blocks, text), metadata={"format": "pt"}))
    return path


__all__ = ["CONV_LAYERS", "LAYERS", "TEXT_LAYERS", "LoraLayer", "add_adapters", "add_text_adapters", "adapter_parameters",
           "kohya_metadata", "kohya_name", "kohya_tensors", "peft_tensors", "remove_adapters", "restore", "save_kohya",
           "save_peft", "stems"]
