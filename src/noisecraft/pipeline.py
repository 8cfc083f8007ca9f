"""`Pipeline`: prompt in, pictures out, in the spirit of diffusers' pipelines.

The whole generation flow is visible in `Pipeline.__call__`:

    prompt -> text encoder -> conditioning -> sampler loop over the denoiser (UNet + CFG)
           -> latents -> VAE decode -> images + A1111 parameters text

Noise is drawn from one CPU generator per image (seed, seed+1, ...), so image k of a batch is
the image a single run with seed+k makes, and CPU and GPU runs start from the same noise.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from . import schedules
from . import sdfiles
from .checkpoints import FORMAT, ModelConfig, load_model_file, model_hash, read_safetensors_header, resolve_weights_file, sniff
from .denoiser import CFGDenoiser, Denoiser, MaskedDenoiser
from .errors import OutOfMemory, UserError
from .lora import LoraStack
from .models.text import TextEmbedding, load_text_encoder
from .models.unet import UNet, timestep_embedding
from .models.vae import AutoencoderKL
from .pngmeta import format_parameters
from .samplers import resolve_sampler, to_vp
from .subjects import SubjectIndex

MAX_SIDE = 4096
MAX_STEPS = 1000
TILE_ABOVE = 128  # latent pixels: larger images decode in tiles unless `vae_tiling` says otherwise
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
    strength: float | None = None  # img2img / inpainting: how much of the start image is re-noised
    subject: str | None = None  # words the UNet reads instead of the prompt's (see subjects.py); None: the prompt's


class Pipeline:
    """A loaded model ready to make pictures: ``Pipeline.from_pretrained(path)("a palm tree")``.

    Loads noisecraft models and Stable Diffusion 1.x / 2.x / SDXL checkpoints (single files and
    diffusers folders); makes pictures from text, from a start image (img2img) and inside a mask
    (inpainting; real inpainting checkpoints or mask-blended latents for ordinary ones).
    """

    supports_img2img = True

    def __init__(self, config: ModelConfig, unet: UNet, vae: AutoencoderKL | None, text_encoder, *,
                 device: torch.device, dtype: torch.dtype = torch.float32, name: str = "", file: Path | None = None,
                 family: str = "noisecraft", subjects: SubjectIndex | None = None):
        self.config, self.unet, self.vae, self.text_encoder = config, unet, vae, text_encoder
        self.subjects = subjects  # the model's subject index, if its file has one (nearest-subject prompts)
        self.device, self.dtype, self.name, self.file, self.family = device, dtype, name or config.name, file, family
        self._hash: str | None = None
        self.vae_tiling: bool | None = None  # None: tile only images larger than TILE_ABOVE latent pixels
        self._loras = LoraStack()
        ac = schedules.alphas_cumprod(schedules.betas(config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end))
        self.denoiser = Denoiser(unet, ac, prediction=config.prediction).to(device)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, device: str | torch.device = "auto",
                        dtype: torch.dtype | None = None, vae: str | os.PathLike | None = None,
                        prediction: str | None = None) -> "Pipeline":
        """Load a model; no path loads the built-in model.

        `path` is a noisecraft model (file or folder), a Stable Diffusion single file
        (``.safetensors``, or a legacy ``.ckpt`` read as weights only), or a diffusers folder.
        `vae` swaps in a standalone autoencoder; `prediction` ("eps" or "v") overrides what the
        file implies (SD 2.x 768 models predict v).
        """
        device = pick_device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        if path is None:
            if not any(BUILTIN_MODEL.glob("*.safetensors")):
                raise UserError("this install has no built-in model; pass a model with --model PATH")
            path = BUILTIN_MODEL
        path = Path(path).expanduser()
        ckpt = load_stable_diffusion(path, prediction)
        if ckpt is not None:
            return cls._from_sd(ckpt, device, dtype, vae)
        if vae is not None or prediction is not None:
            raise UserError("--vae and --prediction are for Stable Diffusion checkpoints; a noisecraft model carries its own")
        return cls._from_noisecraft(resolve_weights_file(path), device, dtype)

    @classmethod
    def _from_noisecraft(cls, file: Path, device, dtype) -> "Pipeline":
        config, parts, file = load_model_file(file)
        if config.kind == "vae" or config.unet is None:
            raise UserError(f"{file} is an autoencoder alone; generation needs a diffusion model (kind 'latent' or 'pixel')")
        unet = _build(UNet, config.unet, parts["unet"], device, dtype)
        vae = _build(AutoencoderKL, config.vae, parts["vae"], device, torch.float32) if config.kind == "latent" else None
        text_encoder = load_text_encoder(config.text_encoder).to(device) if config.text_encoder else None
        if file.parent == BUILTIN_MODEL:
            name = config.name
        else:  # what users call it: the folder of a run's model.safetensors, else the file's stem
            name = file.parent.name if file.name == "model.safetensors" else file.stem
        subjects = SubjectIndex.from_part(parts["subjects"]) if "subjects" in parts and text_encoder is not None else None
        return cls(config, unet, vae, text_encoder, device=device, dtype=dtype, name=name, file=file, subjects=subjects)

    @classmethod
    def _from_sd(cls, ckpt: sdfiles.SDCheckpoint, device, dtype, vae_path) -> "Pipeline":
        from .models import clip

        config = ckpt.config
        if vae_path is not None:
            ckpt.parts["vae"] = sdfiles.load_vae_file(Path(vae_path))
            config = dataclasses.replace(config, vae=sdfiles.vae_config_of(ckpt.parts["vae"], ckpt.family))
        unet = _build(UNet, config.unet, ckpt.parts.pop("unet"), device, dtype)
        # The VAE runs in the UNet's dtype on GPUs; `decode` falls back to float32 if fp16 overflows.
        vae = _build(AutoencoderKL, config.vae, ckpt.parts.pop("vae"), device, dtype if device.type == "cuda" else torch.float32)
        if ckpt.folder is not None:
            text_encoder = clip.sd_text_encoder_from_folder(ckpt.folder, ckpt.family, device=device, dtype=dtype)
        else:
            text_encoder = clip.sd_text_encoder_from_single_file(ckpt.text_state, ckpt.family, device=device, dtype=dtype)
        return cls(config, unet, vae, text_encoder, device=device, dtype=dtype, name=config.name, file=ckpt.file,
                   family=ckpt.family)

    def enable_sequential_offload(self) -> None:
        """Keep the weights in CPU memory and move each block to the GPU only while it runs.

        For GPUs too small for the whole model: the UNet's blocks, the VAE's halves and the text
        encoder each visit the device in turn (slower, since weights cross the bus every call).
        """
        device = self.device
        if device.type == "cpu":
            return

        def visit(module):
            module.register_forward_pre_hook(lambda m, args: m.to(device))
            module.register_forward_hook(lambda m, args, out: m.to("cpu"))
            module.to("cpu")

        for blocks in (self.unet.input_blocks, self.unet.output_blocks):
            for block in blocks:
                visit(block)
        for name in ("time_embed", "label_emb", "middle_block", "out"):
            if hasattr(self.unet, name):
                visit(getattr(self.unet, name))
        if self.vae is not None:
            for half in (self.vae.encoder, self.vae.decoder, self.vae.quant_conv, self.vae.post_quant_conv):
                visit(half)
        if isinstance(self.text_encoder, torch.nn.Module):
            visit(self.text_encoder)
        torch.cuda.empty_cache() if device.type == "cuda" else None

    # -- LoRA -------------------------------------------------------------------------------------
    def load_lora(self, path: str | os.PathLike, scale: float = 1.0) -> int:
        """Merge a LoRA file (kohya/A1111 or diffusers/PEFT) at `scale`; call again to stack more.

        Returns the number of layers changed. `unload_loras` restores the original weights.
        """
        from .lora import unet_targets

        if self.family == "noisecraft":
            raise UserError("LoRA files are for Stable Diffusion checkpoints; this is a noisecraft model")
        targets = {"unet": unet_targets(self.unet, self.config.unet.num_res_blocks)}
        for name, module in getattr(self.text_encoder, "text_lora_targets", dict)().items():
            part, rest = ("te2", name[len("lora_te2_"):]) if name.startswith("lora_te2_") else \
                         ("te1", re.sub(r"^lora_te1?_", "", name))
            targets.setdefault(part, {})[rest] = module
        return self._loras.apply(path, float(scale), targets)

    def load_textual_inversion(self, path: str | os.PathLike, token: str | None = None) -> str:
        """Load a textual-inversion embedding; returns the word that calls it in prompts (default: the file's name)."""
        if not hasattr(self.text_encoder, "load_textual_inversion"):
            raise UserError("textual-inversion embeddings are for Stable Diffusion checkpoints; this model's text encoder takes none")
        return self.text_encoder.load_textual_inversion(path, token)

    def unload_loras(self) -> None:
        self._loras.unload()

    @property
    def loras(self) -> list[tuple[str, float, str]]:
        """(name, scale, short hash) of the LoRA files merged in, for the PNG parameters."""
        return list(self._loras.loaded)

    @property
    def hash(self) -> str:
        """AUTOMATIC1111's short hash of the model file, computed on first use (large files take seconds)."""
        if self._hash is None:
            self._hash = model_hash(self.file) if self.file is not None else ""
        return self._hash

    @property
    def inpainting_model(self) -> bool:
        """A UNet that takes [latents, mask, masked-image latents] (9 channels for SD)."""
        return self.config.unet.in_channels > self.config.unet.out_channels

    # -- validation -------------------------------------------------------------------------
    @property
    def size_factor(self) -> int:
        """Width and height must be multiples of this: the VAE's and the UNet's downsampling."""
        return self.config.downsample_factor * 2 ** (len(self.config.unet.channel_mult) - 1)

    def settings(self, prompt, negative_prompt="", steps=None, guidance_scale=None, sampler=None, width=None,
                 height=None, seed=None, num_images=1, guidance_rescale=0.0, strength=None,
                 init_size: tuple[int, int] | None = None, subject: str | None = "auto") -> Settings:
        """Fill in the model's defaults and check every value, raising `UserError` with one sentence.

        `init_size` is the start image's (width, height) for img2img: it sets the default size and
        makes `strength` (default 0.75) apply. `subject`: "auto" reads the nearest subject of the
        model's subject index (if it has one) instead of the prompt's words, "off" (or None) the
        prompt's own words, any other text that text's words (see `noisecraft.subjects`).
        """
        defaults = self.config.defaults
        if not isinstance(prompt, str):
            raise UserError("the prompt must be text", field="prompt")
        if self.text_encoder is not None and not prompt.strip():
            raise UserError("the prompt is empty; describe the picture you want", field="prompt")
        steps = defaults.get("steps", 20) if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise UserError(f"steps must be a whole number from 1 to {MAX_STEPS}, not {steps!r}", field="steps")
        guidance_scale = float(defaults.get("guidance_scale", 5.0) if guidance_scale is None else guidance_scale)
        if not (0.0 <= guidance_scale <= 100.0):
            raise UserError(f"guidance scale must be a number from 0 to 100, not {guidance_scale}", field="guidance_scale")
        if not (0.0 <= float(guidance_rescale) <= 1.0):
            raise UserError(f"guidance rescale must be from 0 to 1, not {guidance_rescale}", field="guidance_rescale")
        try:
            spec = resolve_sampler(sampler or defaults.get("sampler", "dpmpp_2m_karras"))
        except UserError as error:
            raise UserError(str(error), field="sampler") from None
        factor = self.size_factor
        if init_size is not None:  # default to the start image's size, rounded down to what the model takes
            width = max(factor, init_size[0] // factor * factor) if width is None else width
            height = max(factor, init_size[1] // factor * factor) if height is None else height
            strength = 0.75 if strength is None else strength
            if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < float(strength) <= 1.0:
                raise UserError(f"strength (denoising strength) must be a number above 0 and at most 1, not {strength!r}", field="strength")
            strength = float(strength)
        elif strength is not None:
            raise UserError("strength only applies with a start image (--init-image)", field="strength")
        width = self.config.image_size if width is None else width
        height = self.config.image_size if height is None else height
        for label, side in (("width", width), ("height", height)):
            if isinstance(side, bool) or not isinstance(side, int) or side <= 0:
                raise UserError(f"{label} must be a positive whole number of pixels, not {side!r}", field=label)
            if side % factor:
                raise UserError(f"{label} {side} is not a multiple of {factor}, which this model needs; try {max(factor, round(side / factor) * factor)}", field=label)
            if side > MAX_SIDE:
                raise UserError(f"{label} {side} is larger than the {MAX_SIDE} pixels noisecraft allows; lower --size", field=label)
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise UserError(f"the number of images must be a whole number of at least 1, not {num_images!r}", field="num_images")
        if seed is None or seed == -1:
            seed = random.randrange(2**32)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise UserError(f"seed must be a whole number from 0 (or -1 for random), not {seed!r}", field="seed")
        return Settings(prompt, negative_prompt or "", steps, guidance_scale, float(guidance_rescale), spec.name,
                        width, height, seed, num_images, strength, self._subject(prompt, subject))

    def _subject(self, prompt: str, subject: str | None) -> str | None:
        """What `settings` keeps as Settings.subject: None wherever the prompt's own words are read."""
        if subject is None or subject == "off" or self.text_encoder is None:
            return None
        if not isinstance(subject, str) or not subject.strip():
            raise UserError("subject must be 'auto', 'off' or the words to draw", field="subject")
        if subject == "auto":
            if self.subjects is None:
                return None
            subject = self.subjects.subject_of(self.text_encoder, prompt)
        return None if subject == prompt else subject

    # -- generation ---------------------------------------------------------------------------
    def __call__(self, prompt: str, negative_prompt: str = "", steps: int | None = None,
                 guidance_scale: float | None = None, sampler: str | None = None, width: int | None = None,
                 height: int | None = None, seed: int | None = None, num_images: int = 1,
                 guidance_rescale: float = 0.0, batch_size: int = 16,
                 callback: Callable | None = None, *, init_image: Image.Image | None = None,
                 strength: float | None = None, mask_image: Image.Image | None = None,
                 subject: str | None = "auto", output_type: str = "pil") -> list[Image.Image] | torch.Tensor:
        """Make `num_images` pictures for `prompt`; each carries its A1111 parameters in ``image.info``.

        With `init_image`, start from that picture re-noised by `strength` (img2img); with
        `mask_image` as well, repaint only where the mask is white (inpainting).
        `callback(step, total_steps, x0)` is called after every sampling step of every batch; it may
        raise to interrupt. `batch_size` bounds how many images share one network call.
        `subject`: "auto" draws the nearest subject the model knows when its file has a subject index
        (the built-in model does), "off" or None the prompt's own words, any other text that text's
        words, so a `Settings.subject` passes straight through (see `noisecraft.subjects`).
        `output_type="pt"` returns the pictures as one float tensor [N, 3, H, W] in [0, 1] instead.
        """
        if output_type not in ("pil", "pt"):
            raise UserError(f"output_type must be 'pil' or 'pt', not {output_type!r}")
        if mask_image is not None and init_image is None:
            raise UserError("a mask needs the image it applies to (--init-image)", field="mask_image")
        if init_image is not None and self.vae is None:
            raise UserError("img2img needs a latent model with an autoencoder; this pixel model has none", field="init_image")
        s = self.settings(prompt, negative_prompt, steps, guidance_scale, sampler, width, height, seed, num_images,
                          guidance_rescale, strength, init_image.size if init_image is not None else None, subject)
        init = _pixels(init_image, s.width, s.height) if init_image is not None else None
        mask = _mask(mask_image, s.width, s.height) if mask_image is not None else None
        images = []
        for start in range(0, s.num_images, batch_size):
            seeds = [s.seed + k for k in range(start, min(start + batch_size, s.num_images))]
            try:
                pixels = self._generate(s, seeds, callback, init, mask)
                images += [pixels] if output_type == "pt" else [self._to_image(p, s, seed) for p, seed in zip(pixels, seeds)]
            except torch.OutOfMemoryError:
                raise OutOfMemory(f"out of memory making {len(seeds)} images of {s.width}x{s.height}; lower the size, the number of images or the batch size") from None
            except RuntimeError as error:
                if "can't allocate memory" in str(error) or "out of memory" in str(error):
                    raise OutOfMemory(f"out of memory making {len(seeds)} images of {s.width}x{s.height}; lower the size, the number of images or the batch size") from None
                raise
        return torch.cat(images) if output_type == "pt" else images

    def encode_prompts(self, prompts: list[str], size: tuple[int, int] | None = None, words: list[str] | None = None) -> dict:
        """The conditioning dict the UNet takes (`context`, `context_mask`, `y`) for a batch of prompts.

        `words`: texts whose token states replace the prompts' (the pooled vectors stay the prompts').

        SDXL's `y` is [pooled text | sinusoids of (height, width, crop top, crop left, height, width)]
        for an image of `size` (width, height), uncropped (Podell et al. 2023, Sec. 2.2).
        """
        if self.text_encoder is None:
            return {}
        emb: TextEmbedding = self.text_encoder.encode(prompts).to(self.device)
        if words is not None and words != prompts:
            read = self.text_encoder.encode(words).to(self.device)
            emb = TextEmbedding(read.tokens, emb.pooled, read.mask)
        if self.family == "sdxl":  # an empty prompt means zero conditioning, as SDXL was trained (sgm's ucg)
            empty = torch.tensor([not p for p in prompts], device=self.device)
            emb = TextEmbedding(emb.tokens.masked_fill(empty[:, None, None], 0.0), emb.pooled.masked_fill(empty[:, None], 0.0), emb.mask)
        cond = {"context": emb.tokens.to(self.dtype)}
        if self.family == "noisecraft":
            cond["context_mask"] = emb.mask
        if self.config.unet.adm_in_channels:
            y = emb.pooled
            if self.family == "sdxl":
                width, height = size or (self.config.image_size, self.config.image_size)
                ids = torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32, device=self.device)
                dim = (self.config.unet.adm_in_channels - y.shape[1]) // len(ids)
                y = torch.cat([y.float(), timestep_embedding(ids, dim).reshape(1, -1).expand(len(prompts), -1)], dim=1)
            cond["y"] = y.to(self.dtype)
        return cond

    @torch.no_grad()
    def _generate(self, s: Settings, seeds: list[int], callback, init: torch.Tensor | None,
                  mask: torch.Tensor | None) -> torch.Tensor:
        """One batch: pictures [n, C, H, W] in [0, 1] for images seeds[0..n-1]."""
        spec = resolve_sampler(s.sampler)
        n = len(seeds)
        guided = s.guidance_scale != 1.0 and self.text_encoder is not None
        negatives = [s.negative_prompt] * n if guided else []
        both = self.encode_prompts([s.prompt] * n + negatives, (s.width, s.height), [s.subject or s.prompt] * n + negatives)
        cond = {k: v[:n] for k, v in both.items()}
        uncond = {k: v[n:] for k, v in both.items()} if guided else None

        f = self.config.downsample_factor
        shape = (self.config.unet.out_channels, s.height // f, s.width // f)
        noise = BatchNoise(seeds, self.device, self.dtype)
        sigmas = spec.sigmas(self.denoiser.sigmas.cpu(), s.steps)  # float64 on the CPU: samplers read floats
        if init is not None:  # img2img: the last floor(steps * strength) steps of the schedule (diffusers' rule), at least one
            sigmas = sigmas[s.steps - max(1, int(s.steps * s.strength)):]
        # Each image's generator is drawn in diffusers' order: start-image latents, starting noise,
        # masked-image latents, then whatever a stochastic sampler needs.
        pure_noise = init is None or (mask is not None and s.strength == 1.0)
        init = init.to(self.device).expand(n, -1, -1, -1) if init is not None else None
        image_latents = self.encode(init, noise) if init is not None and not (self.inpainting_model and pure_noise) else None
        start = noise.initial(shape)
        x = start * spec.init_scale(sigmas) if pure_noise else image_latents + float(sigmas[0]) * start
        if self.inpainting_model:
            extra = self._inpaint_channels(init, mask, noise, n, shape)
            cond["concat"] = extra
            if uncond is not None:
                uncond["concat"] = extra
        denoise = CFGDenoiser(self.denoiser, cond, uncond, s.guidance_scale if guided else 1.0, s.guidance_rescale)
        keep = None
        if mask is not None and not self.inpainting_model:
            noise(image_latents)  # diffusers draws masked-image latents here; advance the generators alike, without a VAE pass
            keep = 1.0 - _latent_mask(mask, shape).to(self.device, x.dtype)
            denoise = MaskedDenoiser(denoise, image_latents, start, keep, float(sigmas[0]))

        def on_step(i, sigma, x, x0):
            if callback is not None:
                callback(i + 1, len(sigmas) - 1, x0)

        with torch.autocast(self.device.type, self.dtype, enabled=self.dtype != torch.float32):
            x = spec.fn(denoise, x, sigmas, noise_sampler=noise, callback=on_step, **spec.options)
        x = to_vp(x, sigmas[-1])  # DDIM may stop above sigma 0
        if keep is not None:
            x = keep * image_latents + (1 - keep) * x
        return self.decode(x).cpu()

    def _inpaint_channels(self, init, mask, noise: BatchNoise, n: int, shape) -> torch.Tensor:
        """[mask, masked-image latents] for an inpainting UNet; a blank canvas to paint in for txt2img."""
        if init is None:  # txt2img with an inpainting model: everything masked, over a grey (0) image
            blank = torch.zeros(n, 3, shape[1] * self.config.downsample_factor, shape[2] * self.config.downsample_factor, device=self.device)
            return torch.cat([torch.ones(n, 1, *shape[1:], device=self.device), self.encode(blank)], dim=1).to(self.dtype)
        masked = self.encode(init * (mask.to(init.device) < 0.5), noise)
        return torch.cat([_latent_mask(mask, shape).to(self.device).expand(n, -1, -1, -1), masked], dim=1).to(self.dtype)

    def encode(self, pixels: torch.Tensor, noise: BatchNoise | None = None) -> torch.Tensor:
        """Images in [-1, 1] to scaled latents: a posterior sample drawn from `noise`, or its mean."""
        vae = self.vae
        posterior = vae.encode(pixels.to(self.device, next(vae.parameters()).dtype))
        z = posterior.mean if noise is None else posterior.mean + posterior.std * noise(posterior.mean)
        return ((z.float() - vae.config.shift_factor) * vae.config.scaling_factor).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (or pixels, for pixel models) to images in [0, 1].

        A half-precision VAE that overflows (SDXL's does in fp16) is moved to float32 and the decode
        repeated, instead of returning a black image.
        """
        if self.vae is not None:
            z = latents.float() / self.vae.config.scaling_factor + self.vae.config.shift_factor
            vae_dtype = next(self.vae.parameters()).dtype
            tiled = self.vae_tiling if self.vae_tiling is not None else max(z.shape[-2:]) > TILE_ABOVE
            run = self.vae.decode_tiled if tiled else self.vae.decode
            out = run(z.to(vae_dtype))
            if vae_dtype != torch.float32 and not torch.isfinite(out).all():
                self.vae.float()
                out = run(z)
            latents = out
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
            Denoising_strength=s.strength, CFG_Rescale_phi=s.guidance_rescale or None, Subject=s.subject,
            Lora=", ".join(f"{name}: {scale:g}" for name, scale, _ in self.loras) or None,
            Lora_hashes=", ".join(f"{name}: {short}" for name, _, short in self.loras) or None,
            Version=f"noisecraft {_version()}")


def _version() -> str:
    from . import __version__

    return __version__


def load_stable_diffusion(path: Path, prediction: str | None = None) -> sdfiles.SDCheckpoint | None:
    """`path` read as a Stable Diffusion diffusers folder or single file; None when it is a noisecraft model.

    A file that is neither is left to `load_model_file`, whose error says what it is not.
    """
    if sdfiles.is_diffusers_folder(path):
        return sdfiles.load_diffusers_folder(path, prediction=prediction)
    file = resolve_weights_file(path)
    if not _is_noisecraft_file(file) and sdfiles.is_sd_single_file(file):
        return sdfiles.load_single_file(file, prediction=prediction)
    return None


def _is_noisecraft_file(file: Path) -> bool:
    if sniff(file) != "safetensors":
        return False
    return (read_safetensors_header(file).get("__metadata__") or {}).get("format") == FORMAT


def outpaint_canvas(image: Image.Image, sides: tuple[int, int, int, int], multiple: int = 8) -> tuple[Image.Image, Image.Image]:
    """Outpainting as inpainting: the picture on a larger canvas, and a mask that is white on the new area.

    `sides` = (left, top, right, bottom) pixels to add; the right and bottom grow further to reach a
    multiple of `multiple`. The new area starts as the picture's edge pixels stretched outwards, so
    the autoencoder sees plausible colours rather than a black frame.
    """
    left, top, right, bottom = sides
    width, height = image.size
    right += -(width + left + right) % multiple
    bottom += -(height + top + bottom) % multiple
    array = np.asarray(image.convert("RGB"))
    canvas = np.pad(array, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[top: top + height, left: left + width] = 0
    return Image.fromarray(canvas), Image.fromarray(mask)


def _pixels(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """A PIL image as a [1, 3, H, W] tensor in [-1, 1], resized (Lanczos) to width x height if needed."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    array = torch.from_numpy(np.asarray(image, dtype="float32").copy())
    return (array / 127.5 - 1.0).permute(2, 0, 1)[None]


def _mask(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """A mask as [1, 1, H, W] of 0 (keep) and 1 (repaint): white repaints, as in A1111 and diffusers."""
    image = image.convert("L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    array = torch.from_numpy(np.asarray(image, dtype="float32").copy()) / 255.0
    return (array >= 0.5).float()[None, None]


def _latent_mask(mask: torch.Tensor, shape) -> torch.Tensor:
    return torch.nn.functional.interpolate(mask, size=tuple(shape[1:]))  # nearest, as diffusers


def _build(cls, config, state: dict, device, dtype):
    with torch.device("meta"):
        module = cls(config)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise UserError(f"the model file's weights do not fit its config ({str(error).splitlines()[0]})") from None
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)
