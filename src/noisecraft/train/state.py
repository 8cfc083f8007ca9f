"""Training checkpoints: everything needed to resume bit-exactly, in one safetensors file.

Tensors: ``model.*`` (trained weights), ``ema.*`` (their exponential moving average),
``optim.<i>.<name>`` (AdamW moments per parameter), ``rng.*`` (generator states).
Metadata: the step, counters and both configs as JSON. No pickle anywhere; the file is written
to a temporary name and renamed, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoints import read_safetensors_header, sniff, write_safetensors
from ..errors import ModelFileError

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    state = optimizer.state_dict()
    for index, param_state in state["state"].items():
        for name, value in param_state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    write_safetensors(path, tensors, {"meta": json.dumps(meta), "optim_groups": json.dumps(state["param_groups"])})


def load_checkpoint(path: Path, model: torch.nn.Module, ema: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, EMA, optimizer and RNG from `path`; returns the saved metadata."""
    from safetensors.torch import load_file

    if sniff(path) != "safetensors":
        raise ModelFileError(f"{path} is not a noisecraft training checkpoint; move it away or start with --no-resume")
    header = read_safetensors_header(path)
    tensors = load_file(str(path))
    parts: dict[str, dict] = {"model": {}, "ema": {}, "optim": {}, "rng": {}}
    for name, tensor in tensors.items():
        part, _, key = name.partition(".")
        parts[part][key] = tensor
    device = next(model.parameters()).device
    model.load_state_dict(parts["model"])
    ema.load_state_dict(parts["ema"])
    optim_state: dict[int, dict] = {}
    for key, value in parts["optim"].items():
        index, _, name = key.partition(".")
        optim_state.setdefault(int(index), {})[name] = value.to(device) if name != "step" else value
    groups = json.loads(header["__metadata__"]["optim_groups"])
    optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
    torch.set_rng_state(parts["rng"]["torch"])
    if "cuda" in parts["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(parts["rng"]["cuda"])
    return json.loads(header["__metadata__"]["meta"])
