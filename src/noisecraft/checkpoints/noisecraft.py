"""noisecraft's own model files: safetensors weights with their typed config in the metadata, never a pickle.

A noisecraft model is one ``.safetensors`` file (or a folder holding one, beside its licence
notes and model card). Its tensors are named ``unet.*``, ``vae.*`` (original Stable Diffusion
layouts) and ``subjects.*`` (a subject index, `text.subjects`); its metadata holds
``{"format": "noisecraft", "config": <JSON>}``, the `ModelConfig` that rebuilds the networks.
Nothing else is needed to load it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import ModelFileError
from ..text.subjects import SubjectIndex
from .config import ModelConfig
from .io import check_finite, read_safetensors_header, sniff, weights_file, write_safetensors

FORMAT = "noisecraft"


def is_noisecraft(header: dict | None) -> bool:
    """Whether a safetensors header (None: not a safetensors file) is a noisecraft model's."""
    return header is not None and (header.get("__metadata__") or {}).get("format") == FORMAT


def read_model_file(file: Path, fmt: str, header: dict | None, device: str | torch.device = "cpu") -> tuple[ModelConfig, dict[str, dict[str, torch.Tensor]]]:
    """The config and the state dicts per part (``unet``, ``vae``, ``subjects``) of a sniffed file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if fmt in ("zip-pickle", "pickle"):
        raise ModelFileError(f"{file} is a pickle, which can run code when loaded; noisecraft only loads .safetensors model files")
    if fmt != "safetensors":
        raise ModelFileError(f"{file} is not a safetensors model file (corrupt or another format)")
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ModelFileError(f"{file} is a safetensors file without a noisecraft config; it is not a noisecraft model")
    try:
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        tensors = load_file(str(file), device=str(device))
    except (SafetensorError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{file} is corrupt ({error}); download or copy it again") from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        part, _, key = name.partition(".")
        parts.setdefault(part, {})[key] = tensor
    check_finite(tensors, file)
    expected = metadata.get("subjects_sha256")
    if expected and ("subjects" not in parts or SubjectIndex.digest(parts["subjects"]) != expected):
        raise ModelFileError(f"{file} has a damaged subject index (its checksum does not match); download or copy it again")
    return config, parts


def load_model_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ModelConfig, dict[str, dict[str, torch.Tensor]], Path]:
    """Read a noisecraft model file or folder: its config, its state dicts per part, and the file read."""
    file = weights_file(path)
    fmt = sniff(file)
    config, parts = read_model_file(file, fmt, read_safetensors_header(file) if fmt == "safetensors" else None, device)
    return config, parts, file


def save_model_file(path: str | os.PathLike, config: ModelConfig, parts: dict[str, dict[str, torch.Tensor]], dtype: torch.dtype | None = None) -> Path:
    """Write config + state dicts as one safetensors file, atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for part, state in parts.items():
        for key, tensor in state.items():
            tensor = tensor.detach().to("cpu")
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            tensors[f"{part}.{key}"] = tensor.contiguous()
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict())}
    if "subjects" in parts:
        metadata["subjects_sha256"] = SubjectIndex.digest({k.partition(".")[2]: t for k, t in tensors.items() if k.startswith("subjects.")})
    return write_safetensors(path, tensors, metadata)
