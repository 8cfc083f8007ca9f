"""What a model needs in memory, said before it loads (a 12B FLUX.1 is 24 GB in bf16, more than many cards have)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..devices import free_bytes
from .io import SAFETENSORS_DTYPES, read_safetensors_header, sniff

GB = 1e9


def weight_bytes(files: list[Path], dtype: torch.dtype) -> int:
    """Bytes the weights in `files` take once loaded in `dtype` (fp8 and GGUF weights keep their stored size)."""
    total = 0
    for file in files:
        if sniff(file) != "safetensors":
            total += file.stat().st_size  # GGUF blocks and pickles: as stored
            continue
        for name, entry in read_safetensors_header(file).items():
            stored = SAFETENSORS_DTYPES.get(entry.get("dtype")) if name != "__metadata__" else None
            if stored is None:
                continue
            count = math.prod(entry["shape"])
            kept = stored.is_floating_point and stored.itemsize > 1  # fp8 stays fp8; others take the compute dtype
            total += count * (dtype.itemsize if kept else stored.itemsize)
    return total


def model_files(path: Path, extra: list | None = None) -> list[Path]:
    """The weight files a model path and its extra text encoder / VAE files load."""
    files = sorted(path.rglob("*.safetensors")) + sorted(path.rglob("*.gguf")) if path.is_dir() else [path]
    return files + [Path(f) for f in (extra or [])]


def fit_report(name: str, files: list[Path], device: torch.device, dtype: torch.dtype, offload: bool,
               quiet_below: float = 0) -> str | None:
    """One sentence: the model's size in memory, the room on `device`, and what to do when it will not fit
    (None for a model under `quiet_below` bytes that fits: nothing worth saying)."""
    need, free = weight_bytes(files, dtype), free_bytes(device)
    if need < quiet_below and (free is None or need <= free * 0.9):
        return None
    said = f"{name}: {need / GB:.1f} GB of weights in {str(dtype).removeprefix('torch.')}"
    if free is None:
        return said
    room = f"{free / GB:.1f} GB free {'on ' + str(device) if device.type != 'cpu' else 'in memory'}"
    if need <= free * 0.9 or (offload and device.type == "cuda"):
        return f"{said}, {room}" + ("; offloaded, one block at a time on the GPU" if offload and device.type == "cuda" else "")
    if device.type == "cuda":
        return f"{said}, more than the {room}: add --offload (one block at a time on the GPU) or use an fp8 or GGUF file"
    return f"{said}, more than the {room}: loading may fail or swap; an fp8 or GGUF file is smaller"


__all__ = ["fit_report", "model_files", "weight_bytes"]
