"""`ModelConfig`: everything needed to rebuild a model from its weights, stored inside the weights file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .. import schedules
from ..denoiser import Denoiser, FlowDenoiser
from ..errors import ModelFileError, UserError
from ..models.flux import FluxConfig
from ..models.mmdit import MMDiTConfig
from ..models.unet import UNetConfig
from ..models.zimage import ZImageConfig
from ..models.vae import VAEConfig
from ..samplers import SamplerSpec

TRANSFORMERS = {"mmdit": MMDiTConfig, "flux": FluxConfig, "zimage": ZImageConfig}  # the flow-matching networks, by the name stored in files
# Deterministic samplers whose steps are the flow's own on sigma in [0, 1] to first order (Euler is diffusers'
# FlowMatchEuler exactly); the ancestral, SDE and VP-form samplers assume the variance-preserving path.
FLOW_SAMPLERS = ("euler", "euler_karras", "euler_exponential", "heun", "heun_karras", "dpmpp_2m", "dpmpp_2m_karras",
                 "dpmpp_2m_exponential")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model from its weights file.

    ``kind`` is ``"latent"`` (UNet over a VAE's latents), ``"pixel"`` (UNet over pixels) or
    ``"vae"`` (an autoencoder alone, for training latent models on top of it). Flow-matching models (SD3,
    FLUX.1) have a ``transformer`` instead of a ``unet`` and ``prediction="flow"``, sampled with a static
    ``flow_shift`` (SD3: 3.0) or, with ``flow_dynamic``, a shift that grows with the picture (FLUX.1 dev).
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
    transformer: MMDiTConfig | FluxConfig | ZImageConfig | None = None
    flow_shift: float = 1.0
    flow_dynamic: bool = False

    @property
    def downsample_factor(self) -> int:
        return self.vae.downsample_factor if self.kind == "latent" else 1

    @property
    def network(self) -> UNetConfig | MMDiTConfig | FluxConfig | ZImageConfig | None:
        """The denoising network's config: the UNet's or the transformer's."""
        return self.unet or self.transformer

    @property
    def inpainting(self) -> bool:
        """A UNet that takes [latents, mask, masked-image latents] (9 channels for SD)."""
        return self.unet is not None and self.unet.in_channels > self.unet.out_channels

    @property
    def distilled_guidance(self) -> bool:
        """FLUX.1 was distilled from guided outputs: no classifier-free guidance (dev reads the scale as an input)."""
        return isinstance(self.transformer, FluxConfig)

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the sampler walks (FLUX packs them into tokens only inside its network)."""
        return self.vae.embed_dim if self.distilled_guidance else self.network.out_channels

    @property
    def size_factor(self) -> int:
        """Width and height must be multiples of this: the VAE's downsampling times the UNet's, or the patch size."""
        if self.transformer is not None:
            return self.downsample_factor * 2  # SD3's 2x2 patches; FLUX's 2x2 packing
        return self.downsample_factor * 2 ** (len(self.unet.channel_mult) - 1)

    def denoiser(self, net: torch.nn.Module) -> Denoiser | FlowDenoiser:
        """`net` wrapped as the samplers' denoise(x, sigma, cond) -> x0."""
        if self.prediction == "flow":
            return FlowDenoiser(net, self.num_train_timesteps, 1.0 if self.flow_dynamic else self.flow_shift)
        return Denoiser(net, self.alphas_cumprod(), prediction=self.prediction)

    def sampling(self, spec: SamplerSpec, steps: int, width: int, height: int, strength: float | None = None,
                 train_sigmas: torch.Tensor | None = None):
        """(spec, sigmas): the sampler as it runs on this model and the float64 sigmas it walks for `steps` steps; with a
        start picture (img2img at `strength`) only the last part, as diffusers' pipelines of the family cut it.

        Flow models start from pure noise at sigma 1 and take their own spacing (SD3's shifted grid, FLUX's
        resolution shift); a Karras or exponential schedule spans their training sigmas instead."""
        spec, sigmas = self._walk(spec, steps, width, height, train_sigmas)
        if strength is None:
            return spec, sigmas
        if self.prediction == "flow":  # SD3 / FLUX img2img: skip int(steps - steps * strength) steps
            return spec, sigmas[min(steps - 1, int(max(steps - steps * strength, 0))):]
        return spec, sigmas[steps - max(1, int(steps * strength)):]  # the last floor(steps * strength), at least one

    def _walk(self, spec: SamplerSpec, steps: int, width: int, height: int, train_sigmas: torch.Tensor):
        if self.prediction != "flow":
            return spec, spec.sigmas(train_sigmas, steps)
        if spec.name not in FLOW_SAMPLERS:
            raise UserError(f"the {spec.a1111_name} sampler is not made for flow-matching models such as this one; "
                            "use Euler, Heun or DPM++ 2M", field="sampler")
        spec = dataclasses.replace(spec, init="sigma")
        if spec.spacing in ("karras", "exponential"):
            return spec, spec.sigmas(train_sigmas, steps)
        if self.distilled_guidance or isinstance(self.transformer, ZImageConfig):
            tokens = (height // self.size_factor) * (width // self.size_factor)
            mu = schedules.flow_mu(tokens) if self.flow_dynamic else None
            return spec, schedules.flux_sigmas(steps, mu, self.flow_shift)
        return spec, schedules.flow_sigmas(steps, shift=self.flow_shift, num_train_timesteps=self.num_train_timesteps)

    def alphas_cumprod(self) -> torch.Tensor:
        """The training noise schedule (float64 abar_t), as the model was trained."""
        return schedules.alphas_cumprod(schedules.betas(self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end))

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["unet"] = self.unet.to_dict() if self.unet else None
        data["vae"] = self.vae.to_dict() if self.vae else None
        if self.transformer is not None:
            name = next(k for k, cls in TRANSFORMERS.items() if isinstance(self.transformer, cls))
            data["transformer"] = {"type": name, **self.transformer.to_dict()}
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
        if data.get("transformer"):
            fields = dict(data["transformer"])
            data["transformer"] = TRANSFORMERS[fields.pop("type")].from_dict(fields)
        return cls(**data)
