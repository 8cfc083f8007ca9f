"""`ModelConfig`: everything needed to rebuild a model from its weights, stored inside the weights file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .. import schedules
from ..errors import ModelFileError
from ..models.unet import UNetConfig
from ..models.vae import VAEConfig


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
    def downsample_factor(self) -> int:
        return self.vae.downsample_factor if self.kind == "latent" else 1

    def alphas_cumprod(self) -> torch.Tensor:
        """The training noise schedule (float64 abar_t), as the model was trained."""
        return schedules.alphas_cumprod(schedules.betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end))

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["unet"] = self.unet.to_dict() if self.unet else None
        data["vae"] = self.vae.to_dict() if self.vae else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ModelFileError("the model config is not a JSON object; the file is corrupt")
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelFileError(f"the model config has fields this noisecraft does not know ({', '.join(sorted(unknown))}); upgrade noisecraft")
        data["unet"] = UNetConfig.from_dict(data["unet"]) if data.get("unet") else None
        data["vae"] = VAEConfig.from_dict(data["vae"]) if data.get("vae") else None
        return cls(**data)
