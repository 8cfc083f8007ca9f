"""`Pipeline`: prompt in, pictures out, in the spirit of diffusers' pipelines.

The whole generation flow is visible in `Pipeline.__call__`:

    prompt -> text encoder -> conditioning -> sampler loop over the denoiser (UNet + CFG)
           -> latents -> VAE decode -> images + A1111 parameters text

Noise is drawn from one CPU generator per image (seed, seed+1, ...), so image k of a batch is
the image a single run with seed+k makes, and CPU and GPU runs start from the same noise.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from . import schedules
from .checkpoints import ModelConfig, load_model_file, model_hash
from .denoiser import CFGDenoiser, Denoiser
from .errors import UserError
from .models.text import TextEmbedding, load_text_encoder
from .models.unet import UNet
from .models.vae import AutoencoderKL
from .pngmeta import format_parameters
from .samplers import resolve_sampler, to_vp

MAX_SIDE = 4096
MAX_STEPS = 1000
BUILTIN_MODEL = Path(__file__).parent / "builtin"


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but this machine has no Apple GPU; use --device cpu or auto")
    return device


class BatchNoise:
    """Standard normal noise from one CPU generator per image, moved to the sampling device."""

    def __init__(self, seeds: list[int], device: torch.device, dtype: torch.dtype):
        self.generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        self.device, self.dtype = device, dtype

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        shape = (1, *like.shape[1:])
        noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in self.generators]
        return torch.cat(noise).to(device=like.device, dtype=like.dtype)

    def initial(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self(torch.empty(len(self.generators), *shape, device=self.device, dtype=self.dtype))


@dataclass
class Settings:
    """One generation's settings after defaults and validation."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    guidance_rescale: float
    sampler: str
    width: int
    height: int
    seed: int
    num_images: int


class Pipeline:
    """A loaded model ready to make pictures: ``Pipeline.from_pretrained(path)("a palm tree")``."""

    def __init__(self, config: ModelConfig, unet: UNet, vae: AutoencoderKL | None, text_encoder, *,
                 device: torch.device, dtype: torch.dtype = torch.float32, name: str = "", hash: str = ""):
        self.config, self.unet, self.vae, self.text_encoder = config, unet, vae, text_encoder
        self.device, self.dtype, self.name, self.hash = device, dtype, name or config.name, hash
        ac = schedules.alphas_cumprod(schedules.betas(config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end))
        self.denoiser = Denoiser(unet, ac, prediction=config.prediction).to(device)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
                        dtype: torch.dtype | None = None) -> "Pipeline":
        """Load a noisecraft model folder or `.safetensors` file; no path loads the built-in model."""
        device = pick_device(device)
        if path is None:
            if not any(BUILTIN_MODEL.glob("*.safetensors")):
                raise UserError("this install has no built-in model; pass a model with --model PATH")
            path = BUILTIN_MODEL
        config, parts, file = load_model_file(path)
        if config.kind == "vae" or config.unet is None:
            raise UserError(f"{file} is an autoencoder alone; generation needs a diffusion model (kind 'latent' or 'pixel')")
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        unet = _build(UNet, config.unet, parts["unet"], device, dtype)
        vae = _build(AutoencoderKL, config.vae, parts["vae"], device, torch.float32) if config.kind == "latent" else None
        text_encoder = load_text_encoder(config.text_encoder).to(device) if config.text_encoder else None
        if file.parent == BUILTIN_MODEL:
            name = config.name
        else:  # what users call it: the folder of a run's model.safetensors, else the file's stem
            name = file.parent.name if file.name == "model.safetensors" else file.stem
        return cls(config, unet, vae, text_encoder, device=device, dtype=dtype, name=name, hash=model_hash(file))

    # -- validation -------------------------------------------------------------------------
    @property
    def size_factor(self) -> int:
        """Width and height must be multiples of this: the VAE's and the UNet's downsampling."""
        return self.config.downsample_factor * 2 ** (len(self.config.unet.channel_mult) - 1)

    def settings(self, prompt, negative_prompt="", steps=None, guidance_scale=None, sampler=None, width=None,
                 height=None, seed=None, num_images=1, guidance_rescale=0.0) -> Settings:
        """Fill in the model's defaults and check every value, raising `UserError` with one sentence."""
        defaults = self.config.defaults
        if not isinstance(prompt, str):
            raise UserError("the prompt must be text")
        if self.text_encoder is not None and not prompt.strip():
            raise UserError("the prompt is empty; describe the picture you want")
        steps = defaults.get("steps", 20) if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise UserError(f"steps must be a whole number from 1 to {MAX_STEPS}, not {steps!r}")
        guidance_scale = float(defaults.get("guidance_scale", 5.0) if guidance_scale is None else guidance_scale)
        if not (0.0 <= guidance_scale <= 100.0):
            raise UserError(f"guidance scale must be a number from 0 to 100, not {guidance_scale}")
        if not (0.0 <= float(guidance_rescale) <= 1.0):
            raise UserError(f"guidance rescale must be from 0 to 1, not {guidance_rescale}")
        spec = resolve_sampler(sampler or defaults.get("sampler", "dpmpp_2m_karras"))
        width = self.config.image_size if width is None else width
        height = self.config.image_size if height is None else height
        factor = self.size_factor
        for label, side in (("width", width), ("height", height)):
            if isinstance(side, bool) or not isinstance(side, int) or side <= 0:
                raise UserError(f"{label} must be a positive whole number of pixels, not {side!r}")
            if side % factor:
                raise UserError(f"{label} {side} is not a multiple of {factor}, which this model needs; try {max(factor, round(side / factor) * factor)}")
            if side > MAX_SIDE:
                raise UserError(f"{label} {side} is larger than the {MAX_SIDE} pixels noisecraft allows; lower --size")
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise UserError(f"the number of images must be a whole number of at least 1, not {num_images!r}")
        if seed is None or seed == -1:
            seed = random.randrange(2**32)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise UserError(f"seed must be a whole number from 0 (or -1 for random), not {seed!r}")
        return Settings(prompt, negative_prompt or "", steps, guidance_scale, float(guidance_rescale), spec.name,
                        width, height, seed, num_images)

    # -- generation ---------------------------------------------------------------------------
    def __call__(self, prompt: str, negative_prompt: str = "", steps: int | None = None,
                 guidance_scale: float | None = None, sampler: str | None = None, width: int | None = None,
                 height: int | None = None, seed: int | None = None, num_images: int = 1,
                 guidance_rescale: float = 0.0, batch_size: int = 16,
                 callback: Callable | None = None) -> list[Image.Image]:
        """Make `num_images` pictures for `prompt`; each carries its A1111 parameters in ``image.info``.

        `callback(step, total_steps, x0)` is called after every sampling step of every batch; it may
        raise to interrupt. `batch_size` bounds how many images share one network call.
        """
        s = self.settings(prompt, negative_prompt, steps, guidance_scale, sampler, width, height, seed,
                          num_images, guidance_rescale)
        images = []
        for start in range(0, s.num_images, batch_size):
            seeds = [s.seed + k for k in range(start, min(start + batch_size, s.num_images))]
            try:
                images += self._generate(s, seeds, callback)
            except torch.OutOfMemoryError:
                raise UserError(f"out of memory making {len(seeds)} images of {s.width}x{s.height}; lower the size, the number of images or the batch size") from None
            except RuntimeError as error:
                if "can't allocate memory" in str(error) or "out of memory" in str(error):
                    raise UserError(f"out of memory making {len(seeds)} images of {s.width}x{s.height}; lower the size, the number of images or the batch size") from None
                raise
        return images

    def encode_prompts(self, prompts: list[str]) -> dict:
        """The conditioning dict the UNet takes (`context`, `context_mask`, `y`) for a batch of prompts."""
        if self.text_encoder is None:
            return {}
        emb: TextEmbedding = self.text_encoder.encode(prompts).to(self.device)
        cond = {"context": emb.tokens.to(self.dtype), "context_mask": emb.mask}
        if self.config.unet.adm_in_channels:
            cond["y"] = emb.pooled.to(self.dtype)
        return cond

    @torch.no_grad()
    def _generate(self, s: Settings, seeds: list[int], callback) -> list[Image.Image]:
        spec = resolve_sampler(s.sampler)
        n = len(seeds)
        guided = s.guidance_scale != 1.0 and self.text_encoder is not None
        both = self.encode_prompts([s.prompt] * n + ([s.negative_prompt] * n if guided else []))
        cond = {k: v[:n] for k, v in both.items()}
        uncond = {k: v[n:] for k, v in both.items()} if guided else None
        denoise = CFGDenoiser(self.denoiser, cond, uncond, s.guidance_scale if guided else 1.0, s.guidance_rescale)

        f = self.config.downsample_factor
        shape = (self.config.unet.in_channels, s.height // f, s.width // f)
        noise = BatchNoise(seeds, self.device, self.dtype)
        sigmas = spec.sigmas(self.denoiser.sigmas.cpu(), s.steps)  # float64 on the CPU: samplers read floats
        x = noise.initial(shape) * spec.init_scale(sigmas)

        def on_step(i, sigma, x, x0):
            if callback is not None:
                callback(i + 1, s.steps, x0)

        with torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            x = spec.fn(denoise, x, sigmas, noise_sampler=noise, callback=on_step, **spec.options)
        pixels = self.decode(to_vp(x, sigmas[-1]))  # DDIM may stop above sigma 0
        return [self._to_image(p, s, seed) for p, seed in zip(pixels, seeds)]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels, for pixel models) to images in [0, 1]."""
        if self.vae is not None:
            z = latents.float() / self.vae.config.scaling_factor + self.vae.config.shift_factor
            latents = self.vae.decode(z)
        return ((latents.float() + 1) / 2).clamp(0, 1)

    def _to_image(self, pixels: torch.Tensor, s: Settings, seed: int) -> Image.Image:
        array = (pixels * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
        image.info["parameters"] = self.parameters_text(s, seed)
        return image

    def parameters_text(self, s: Settings, seed: int) -> str:
        spec = resolve_sampler(s.sampler)
        return format_parameters(
            s.prompt, s.negative_prompt, Steps=s.steps, Sampler=spec.a1111_name, CFG_scale=s.guidance_scale,
            Seed=seed, Size=f"{s.width}x{s.height}", Model_hash=self.hash or None, Model=self.name,
            CFG_Rescale_phi=s.guidance_rescale or None, Version=f"noisecraft {_version()}")


def _version() -> str:
    from . import __version__

    return __version__


def _build(cls, config, state: dict, device, dtype):
    with torch.device("meta"):
        module = cls(config)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise UserError(f"the model file's weights do not fit its config ({str(error).splitlines()[0]})") from None
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)
