"""Model files: safetensors weights with their typed config in the metadata, never a pickle.

A noisecraft model is one ``.safetensors`` file (or a folder holding one, beside its licence
notes and model card). Its tensors are named ``unet.*`` and ``vae.*`` in the original
Stable Diffusion layouts; its metadata holds ``{"format": "noisecraft", "config": <JSON>}``,
the `ModelConfig` that rebuilds the networks. Nothing else is needed to load it.

Files are recognised by their first bytes, not their name: a pickle (zip or protocol-2
stream) renamed ``.safetensors`` is refused before anything is deserialised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ModelFileError
from .models.unet import UNetConfig
from .models.vae import VAEConfig
from .weightfiles import read_safetensors_header, sniff  # noqa: F401 (part of this module's interface)

FORMAT = "noisecraft"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model from its weights file.

    ``kind`` is ``"latent"`` (UNet over a VAE's latents), ``"pixel"`` (UNet over pixels) or
    ``"vae"`` (an autoencoder alone, for training latent models on top of it).
    """

    kind: str = "latent"
    unet: UNetConfig | None = None
    vae: VAEConfig | None = None
    text_encoder: str | None = "minilm"
    prediction: str = "eps"
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    image_size: int = 64
    name: str = "noisecraft"
    defaults: dict = field(default_factory=lambda: {"steps": 20, "guidance_scale": 5.0, "sampler": "dpmpp_2m_karras"})

    @property
    def channels(self) -> int:
        return self.vae.in_channels if self.vae is not None else self.unet.in_channels

    @property
    def downsample_factor(self) -> int:
        return self.vae.downsample_factor if self.kind == "latent" else 1

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["unet"] = self.unet.to_dict() if self.unet else None
        data["vae"] = self.vae.to_dict() if self.vae else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelFileError(f"the model config has fields this noisecraft does not know ({', '.join(sorted(unknown))}); upgrade noisecraft")
        data["unet"] = UNetConfig.from_dict(data["unet"]) if data.get("unet") else None
        data["vae"] = VAEConfig.from_dict(data["vae"]) if data.get("vae") else None
        return cls(**data)


def resolve_weights_file(path: str | os.PathLike) -> Path:
    """The weights file for a model path: the file itself, or the one `.safetensors` in a folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"no model at {path}; give a noisecraft model folder or .safetensors file")
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        preferred = [p for p in candidates if p.name == "model.safetensors"]
        if preferred:
            return preferred[0]
        if len(candidates) != 1:
            raise ModelFileError(f"{path} holds {len(candidates)} .safetensors files; name the one to use")
        return candidates[0]
    return path


def load_model_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ModelConfig, dict[str, dict[str, torch.Tensor]], Path]:
    """Read a noisecraft model file: its config and its state dicts per part (``unet``, ``vae``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = resolve_weights_file(path)
    kind = sniff(file)
    if kind in ("zip-pickle", "pickle"):
        raise ModelFileError(f"{file} is a pickle, which can run code when loaded; noisecraft only loads .safetensors model files")
    if kind != "safetensors":
        raise ModelFileError(f"{file} is not a safetensors model file (corrupt or another format)")
    header = read_safetensors_header(file)
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise ModelFileError(f"{file} is a safetensors file without a noisecraft config; it is not a noisecraft model")
    try:
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        tensors = load_file(str(file), device=str(device))
    except (SafetensorError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelFileError(f"{file} is corrupt ({error}); download or copy it again") from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        part, _, key = name.partition(".")
        parts.setdefault(part, {})[key] = tensor
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise ModelFileError(f"{file} has NaN or infinite weights in {len(bad)} tensors (first: {bad[0]}); the model is broken")
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
    return write_safetensors(path, tensors, {"format": FORMAT, "config": json.dumps(config.to_dict())})


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically: a temporary file beside it, then a rename.

    A kill or a full disk at any moment leaves either the old file or the new one, never half of one.
    """
    from safetensors.torch import save_file

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def model_hash(file: str | os.PathLike, digits: int = 10) -> str:
    """AUTOMATIC1111's short hash of a file: the first hex digits of its sha256 (10 for models, 12 for LoRA files)."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:digits]
