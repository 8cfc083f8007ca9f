"""Training checkpoints: everything needed to resume bit-exactly, in one safetensors file.

Tensors: ``<module>.*`` for each module (``model``, ``ema``, and ``disc`` when a VAE trains with
a discriminator), ``<optimizer>.<i>.<name>`` for each optimizer's per-parameter state (``optim``,
``disc_optim``), ``rng.*`` (generator states). Metadata: the step, counters and both configs as
JSON, and each optimizer's hyper-parameters. No pickle anywhere; the file is written to a temporary
name and renamed, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoints.io import read_safetensors_header, sniff, write_safetensors
from ..errors import ModelFileError

CHECKPOINT = "checkpoint.safetensors"
NESTED = "|"  # joins a nested optimizer state's names (bitsandbytes' quantised state) in a tensor key


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    meta: dict) -> None:
    tensors = {}
    for name, module in modules.items():
        tensors |= {f"{name}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"meta": json.dumps(meta)}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        for index, param_state in state["state"].items():
            for field, value in param_state.items():
                inner = value if isinstance(value, dict) else {None: value}  # bitsandbytes nests its quantised state
                for key, item in inner.items():
                    label = field if key is None else f"{field}{NESTED}{key}"
                    tensors[f"{name}.{index}.{label}"] = torch.as_tensor(item).detach().cpu().clone(memory_format=torch.contiguous_format)  # (shared maps: copies)
        metadata[f"{name}_groups"] = json.dumps(state["param_groups"])
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    write_safetensors(path, tensors, metadata)


def checkpoint_meta(path: Path) -> dict:
    """The step, counters and configs a checkpoint was saved with, read from its header alone."""
    if sniff(path) != "safetensors":
        raise ModelFileError(f"{path} is not a noisecraft training checkpoint; move it away or start with --no-resume")
    metadata = read_safetensors_header(path).get("__metadata__") or {}
    try:
        meta = json.loads(metadata["meta"])
        if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
            raise ValueError
    except (KeyError, ValueError):
        raise ModelFileError(f"{path} is not a noisecraft training checkpoint (its metadata is missing or damaged); "
                             "move it away or start with --no-resume") from None
    return meta


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> dict:
    """Restore modules, optimizers and RNG from `path`; returns the saved metadata."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = checkpoint_meta(path)
    metadata = read_safetensors_header(path).get("__metadata__") or {}
    try:
        tensors = load_file(str(path))
    except SafetensorError as error:
        raise ModelFileError(f"{path} is a damaged checkpoint ({error}); move it away or start with --no-resume") from None
    parts: dict[str, dict] = {}
    for key, tensor in tensors.items():
        part, _, rest = key.partition(".")
        parts.setdefault(part, {})[rest] = tensor
    missing = [name for name in [*modules, *optimizers] if name not in parts and f"{name}_groups" not in metadata]
    if missing:
        raise ModelFileError(f"{path} has no saved {missing[0]}; it was written for a different training setup (use --no-resume)")
    try:
        for name, module in modules.items():
            module.load_state_dict(parts[name])
        for name, optimizer in optimizers.items():
            device = next(p for group in optimizer.param_groups for p in group["params"]).device
            state: dict[int, dict] = {}
            for key, value in parts.get(name, {}).items():
                index, _, field = key.partition(".")
                field, nested, inner = field.partition(NESTED)
                value = value if field == "step" else value.to(device)
                if nested:
                    state.setdefault(int(index), {}).setdefault(field, {})[inner] = value
                else:
                    state.setdefault(int(index), {})[field] = value
            optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata[f"{name}_groups"])})
        torch.set_rng_state(parts["rng"]["torch"])
    except (RuntimeError, KeyError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise ModelFileError(f"{path} does not fit this training setup ({first}); choose another train.out or "
                             "start with --no-resume") from None
    if "cuda" in parts["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(parts["rng"]["cuda"])
    return meta
