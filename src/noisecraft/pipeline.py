"""`Pipeline`: prompt in, pictures out, in the spirit of diffusers' pipelines.

    Request --resolve--> Settings --__call__--> conditioning -> sampler loop over the denoiser
            (UNet + CFG) -> latents -> VAE decode -> images with their A1111 parameters text

`resolve` (settings.py) is the only validation; the whole denoising loop is `Pipeline._sample`.
Noise is drawn from one CPU generator per image (seed, seed+1, ...), so image k of a batch is the
image a single run with seed+k makes, and CPU and GPU runs start from the same noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from typing import Callable

import torch
from PIL import Image

from . import settings as settings_module
from .checkpoints import Source, identify, load_components, model_hash
from .checkpoints.embeddings import load_textual_inversion
from .checkpoints.lora import LoraStack, lora_targets
from .checkpoints.config import ModelConfig
from .checkpoints.controlnet import load_controlnet
from .control import controlled
from .control import prepare as prepare_controls
from .denoiser import CFGDenoiser, MaskedDenoiser
from .devices import default_dtype, free_memory, pick_device, sequential_offload
from .errors import UserError, out_of_memory
from .images import mask_tensor, to_pil, to_tensor
from .latents import LatentCodec, latent_mask
from .models.flux import Flux
from .models.mmdit import MMDiT
from .models.unet import UNet
from .models.vae import AutoencoderKL
from .models.zimage import ZImage
from .samplers import to_vp
from .settings import Limits, ModelTraits, Request, Settings
from .text.conditioner import Conditioner
from .text.subjects import SubjectIndex

def _subject(pipe: "Pipeline", prompt: str, subject: str | None) -> str | None:
    """The words the UNet reads: a prompt that names a fine-tuned subject of a loaded LoRA is read as written
    (the subject index would swap it for a subject the model knew before)."""
    if subject == "auto" and any(t.lower() in prompt.lower() for t in pipe._loras.triggers):
        return None
    return pipe.conditioner.subject(prompt, subject)


def _conditioning(pipe: "Pipeline", s: Settings) -> tuple[dict, dict | None, float]:
    """The conditioning of `s`'s pictures, the negative prompt's under classifier-free guidance, and the CFG scale.
    FLUX.1 takes no CFG: dev reads the guidance scale as an input (a distilled guidance), schnell ignores it."""
    n, distilled = s.num_images, pipe.config.distilled_guidance
    guided = s.guidance_scale != 1.0 and pipe.conditioner.conditional and not distilled
    cond, uncond = pipe.conditioner.pair(s.prompt, s.negative_prompt, s.subject, n, (s.width, s.height), guided)
    if distilled:
        cond["guidance"] = torch.full((n,), s.guidance_scale, device=pipe.device)
    return cond, uncond, s.guidance_scale if guided else 1.0


def _traits(pipe: "Pipeline") -> ModelTraits:
    """What `resolve` checks a request against: sizes, defaults, the sigma walk, the subject, the negative prompt."""
    sampling = functools.partial(pipe.config.sampling, train_sigmas=pipe.denoiser.train_sigmas)
    return ModelTraits(pipe.defaults, pipe.config.image_size, pipe.size_factor, pipe.conditioner.conditional,
                       pipe.vae is not None, sampling, functools.partial(_subject, pipe), negative=not pipe.config.distilled_guidance)


def _offload(pipe: "Pipeline", device: torch.device | None) -> None:
    """Sequential offloading (`Pipeline.enable_sequential_offload`): `device` (if given) becomes where a pipeline loaded
    into CPU memory runs; the network's blocks, the VAE's and the text encoders (unless they have a device of their own)
    move there only while they run."""
    if device is not None and device != pipe.device:
        pipe.device = pipe.conditioner.device = device
        pipe.denoiser.register_buffer("sigmas", pipe.denoiser.sigmas.to(device), persistent=False)
    if pipe.device.type != "cpu":
        c = pipe.conditioner
        text = [m for m in (c.encoder, c.t5) if isinstance(m, torch.nn.Module) and c.text_device is None]
        vae = [pipe.vae] if pipe.vae is not None else []
        sequential_offload([*pipe.network.blocks(), *(pipe.vae.blocks() if vae else []), *text], pipe.device, roots=(pipe.network, *vae))


def _signed(image: Image.Image, parameters: str) -> Image.Image:
    image.info["parameters"] = parameters
    return image


@contextlib.contextmanager
def _memory_errors(part: Settings):
    """Out of memory, on any device, as one sentence saying what to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise out_of_memory(part.num_images, part.width, part.height) from None
    except RuntimeError as error:
        if "can't allocate memory" in str(error) or "out of memory" in str(error):
            raise out_of_memory(part.num_images, part.width, part.height) from None
        raise


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


class Pipeline:
    """A loaded model ready to make pictures: ``Pipeline.from_pretrained(path)("a palm tree")``.

    Loads noisecraft models, Stable Diffusion 1.x / 2.x / SDXL checkpoints and the flow-matching SD3 / SD3.5, FLUX.1
    and Z-Image; makes pictures from text, from a start image (img2img), inside a mask (inpainting) and, for the
    UNet families, in the shape of control pictures (ControlNet)."""

    def __init__(self, config: ModelConfig, network: UNet | MMDiT | Flux | ZImage, vae: AutoencoderKL | None, text_encoder, *,
                 device: torch.device, dtype: torch.dtype = torch.float32, source: Source | None = None,
                 family: str = "noisecraft", subjects: SubjectIndex | None = None, t5=None):
        self.config, self.network, self.vae, self.device, self.dtype, self.family = config, network, vae, device, dtype, family
        self.name, self.file = (source.name, source.file) if source is not None else (config.name, None)
        self.conditioner = Conditioner(text_encoder, family=family, adm_in_channels=config.unet and config.unet.adm_in_channels,
                                       image_size=config.image_size, device=device, dtype=dtype, subjects=subjects,
                                       context_dim=config.transformer and config.transformer.context_dim, t5=t5)
        self.denoiser = config.denoiser(network).to(device)
        self.codec = LatentCodec(vae, dtype)
        self._loras = LoraStack()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | Source | None = None, *, device: str | torch.device = "auto",
                        dtype: torch.dtype | None = None, vae: str | os.PathLike | None = None,
                        prediction: str | None = None, text_encoders: list | None = None, offload: bool = False,
                        text_device: str | torch.device | None = None) -> "Pipeline":
        """A noisecraft model, a Stable Diffusion / SD3 / FLUX / Z-Image single file or diffusers folder (legacy ``.ckpt``
        read as weights only); no path: the built-in model. `vae`: a standalone autoencoder; `prediction` ("eps", "v"):
        overrides the file's; `text_encoders`: CLIP / T5 / Qwen3 files for a file that has none; `offload`: load into CPU
        memory, run block by block on the GPU; `text_device`: where the flow models' text encoders run ("cpu")."""
        device, source = pick_device(device), path if isinstance(path, Source) else identify(path)
        dtype, first = dtype or default_dtype(device), torch.device("cpu") if offload else device
        text_device = torch.device(text_device) if text_device is not None else None
        c = load_components(source, device=first, dtype=dtype, vae=vae, prediction=prediction, text_encoders=text_encoders,
                            text_device=text_device)
        pipe = cls(c.config, c.network, c.vae, c.text_encoder, device=first, dtype=dtype, source=source, family=c.family,
                   subjects=c.subjects, t5=c.t5)
        pipe.conditioner.text_device = text_device
        return pipe.enable_sequential_offload(device) or pipe if offload else pipe

    # -- what the model is ----------------------------------------------------------------------
    @property
    def text_encoder(self):
        return self.conditioner.encoder

    @property
    def unet(self) -> UNet | None:
        return self.network if isinstance(self.network, UNet) else None

    @property
    def transformer(self) -> MMDiT | Flux | ZImage | None:  # diffusers' name for the flow models' networks
        return None if isinstance(self.network, UNet) else self.network

    @property
    def subjects(self) -> SubjectIndex | None:
        return self.conditioner.subjects

    @property
    def hash(self) -> str:
        """AUTOMATIC1111's short hash of the model file, computed on first use (large files take seconds)."""
        return model_hash(self.file) if self.file is not None else ""

    @property
    def inpainting_model(self) -> bool:
        return self.config.inpainting

    @property
    def size_factor(self) -> int:
        return self.config.size_factor

    @property
    def defaults(self) -> dict:
        """The model's default steps, guidance scale and sampler (what a `Request`'s None fields become)."""
        return settings_module.DEFAULTS | dict(self.config.defaults)

    @property
    def traits(self) -> ModelTraits:
        return _traits(self)

    # -- adapters and memory --------------------------------------------------------------------
    def load_lora(self, path: str | os.PathLike, scale: float = 1.0) -> int:
        """Merge a LoRA file (kohya/A1111 or diffusers/PEFT; `noisecraft finetune`'s for noisecraft models) at `scale`;
        call again to stack more, `unload_loras` to restore the weights. Returns the number of layers changed."""
        blocks = self.config.unet.num_res_blocks if self.config.unet else None
        return self._loras.apply(path, float(scale), lora_targets(self.network, blocks, self.text_encoder))

    def load_controlnet(self, path: str | os.PathLike):
        """A ControlNet file or diffusers folder, on this pipeline's device, for `Control(net, picture, ...)`."""
        return load_controlnet(path, self.device, self.dtype)

    def unload_loras(self) -> None:
        self._loras.unload()

    @property
    def loras(self) -> list[tuple[str, float, str]]:
        """(name, scale, short hash) of the LoRA files merged in, for the PNG parameters."""
        return list(self._loras.loaded)

    def load_textual_inversion(self, path: str | os.PathLike, token: str | None = None) -> str:
        """Load a textual-inversion embedding; returns the word that calls it in prompts (default: the file's name)."""
        if not hasattr(self.text_encoder, "add_embedding"):
            raise UserError("textual-inversion embeddings are for Stable Diffusion checkpoints; this model's text encoder takes none")
        return load_textual_inversion(self.text_encoder, path, token)

    def enable_sequential_offload(self, device: torch.device | None = None) -> None:
        """Keep the weights in CPU memory and move each block to the GPU (`device`: this one) only while it runs."""
        _offload(self, device)

    def free_text_encoders(self, *requests: Request | Settings | str) -> None:
        """Encode `requests`' prompts, then free the text encoders (gigabytes); those still draw, others: one sentence."""
        self.conditioner.keep()
        for s in (r if isinstance(r, Settings) else self.resolve(r) for r in requests):
            for n in {min(s.batch_size, s.num_images), s.num_images % s.batch_size or s.batch_size}:
                _conditioning(self, s.part(0, n))
        self.conditioner.free()
        free_memory(self.device)

    def enable_vae_tiling(self, tiling: bool = True) -> None:
        """Decode in tiles (bounded memory for large pictures; automatic above 1024 px)."""
        self.codec.tiling = tiling

    # -- settings and generation ----------------------------------------------------------------
    def resolve(self, request: Request | str, *, init_image: Image.Image | None = None,
                mask_image: Image.Image | None = None, limits: Limits | None = None) -> Settings:
        """Check a request against this model (and a server's `limits`); the only validation there is."""
        request = Request(request) if isinstance(request, str) else request
        return settings_module.resolve(request, self.traits, limits, init_image.size if init_image is not None else None,
                                       mask_image is not None)

    def __call__(self, request: Request | Settings | str | None = None, /, *, init_image: Image.Image | None = None,
                 mask_image: Image.Image | None = None, callback: Callable | None = None, output_type: str = "pil",
                 controls: list | None = None, **fields) -> list[Image.Image] | torch.Tensor:
        """The pictures of a `Settings` (or a `Request`, or a prompt with `Request` fields as keywords), each
        with its A1111 parameters in ``image.info``. With `init_image`: img2img from it at `strength`; with
        `mask_image` too: repaint only where the mask is white; with `controls` (`control.Control`s):
        ControlNets keep the shape of their pictures. `callback(step, total_steps, x0)` runs after every
        sampling step (it may raise to interrupt); `output_type="pt"`: one tensor [N, 3, H, W] in [0, 1]."""
        if output_type not in ("pil", "pt"):
            raise UserError(f"output_type must be 'pil' or 'pt', not {output_type!r}")
        if isinstance(request, Settings):
            if fields:
                raise TypeError(f"settings are already resolved; {', '.join(fields)} cannot be changed here")
            s = request
        else:
            request = Request(request, **fields) if isinstance(request, str) else dataclasses.replace(request or Request(), **fields)
            s = self.resolve(request, init_image=init_image, mask_image=mask_image)
        init = to_tensor(init_image, s.width, s.height) if init_image is not None else None
        mask = mask_tensor(mask_image, s.width, s.height) if mask_image is not None else None
        prepared, extra = prepare_controls(controls, self, s.width, s.height)
        images = []
        for start in range(0, s.num_images, s.batch_size):
            part = s.part(start, min(s.batch_size, s.num_images - start))
            with _memory_errors(part), controlled(self.denoiser, self.network, prepared, len(part.sigmas) - 1, callback) as step:
                pixels = self._sample(part, step, init, mask)
            images += [pixels] if output_type == "pt" else [_signed(to_pil(p), self.parameters_text(part, seed, extra))
                                                            for p, seed in zip(pixels, part.seeds)]
        return torch.cat(images) if output_type == "pt" else images

    @torch.no_grad()
    def _sample(self, s: Settings, callback, init: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """One batch: pictures [n, C, H, W] in [0, 1] for images s.seeds[0..n-1]."""
        spec, sigmas, n = s.sampler, s.sigmas, s.num_images
        cond, uncond, scale = _conditioning(self, s)
        f = self.config.downsample_factor
        shape = (self.config.latent_channels, s.height // f, s.width // f)
        noise = BatchNoise(s.seeds, self.device, self.dtype)
        # Each image's generator is drawn in diffusers' order: start-image latents, starting noise,
        # masked-image latents, then whatever a stochastic sampler needs.
        pure_noise = init is None or (mask is not None and s.strength == 1.0)
        init = init.to(self.device).expand(n, -1, -1, -1) if init is not None else None
        image_latents = self.encode(init, noise) if init is not None and not (self.inpainting_model and pure_noise) else None
        start = noise.initial(shape)
        x = start * spec.init_scale(sigmas) if pure_noise else self.denoiser.noised(image_latents, sigmas[0], start)
        if self.inpainting_model:
            extra = self.codec.inpaint_channels(init, mask, noise, n, shape, f, self.device)
            cond, uncond = cond | {"concat": extra}, uncond and uncond | {"concat": extra}
        denoise = CFGDenoiser(self.denoiser, cond, uncond, scale, s.guidance_rescale)
        keep = None
        if mask is not None and not self.inpainting_model:
            noise(image_latents)  # diffusers draws masked-image latents here; advance the generators alike, without a VAE pass
            keep = 1.0 - latent_mask(mask, shape).to(self.device, x.dtype)
            denoise = MaskedDenoiser(denoise, image_latents, start, keep, float(sigmas[0]), self.denoiser.noised)
        on_step = None if callback is None else (lambda i, sigma, x, x0: callback(i + 1, len(sigmas) - 1, x0))
        with torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            x = spec.fn(denoise, x, sigmas, noise_sampler=noise, callback=on_step, **spec.options)
        x = to_vp(x, sigmas[-1])  # DDIM may stop above sigma 0
        if keep is not None:
            x = keep * image_latents + (1 - keep) * x
        return self.decode(x).cpu()

    def encode(self, pixels: torch.Tensor, noise: BatchNoise | None = None) -> torch.Tensor:
        """Images in [-1, 1] to scaled latents: a posterior sample drawn from `noise`, or its mean."""
        return self.codec.encode(pixels.to(self.device), noise)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels, for pixel models) to images in [0, 1] (`LatentCodec.decode`)."""
        return self.codec.decode(latents)

    def parameters_text(self, s: Settings, seed: int, extra: dict | None = None) -> str:
        """The A1111 parameters text of image `seed` of `s`, as this model writes it into its PNGs."""
        return settings_module.parameters_text(s, seed, model_name=self.name, model_hash=self.hash, loras=self.loras,
                                               extra=extra)

