"""What a user asked for (`Request`) and what will be drawn (`Settings`): the one place settings are checked.

A `Request` holds the user's words: a prompt, sizes, a sampler *name*, None for "the model's
default". `resolve` checks every value against the model (`ModelTraits`) and, for a server, its
`Limits`, fills in the defaults, picks a random seed when none was given, finds the subject the
UNet reads, and returns `Settings`: validated, with the sampler resolved to its spec and the sigma
walk computed. Nothing else validates; everything after `resolve` trusts `Settings`.

    Request --(Pipeline.resolve)--> Settings --(Pipeline.__call__)--> pictures + parameters text

Errors are `UserError`s of one sentence whose `field` names the `Request` field at fault.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from .errors import UserError
from .pngmeta import format_parameters
from .samplers import SamplerSpec, resolve_sampler
from .version import __version__

MAX_SIDE = 4096  # pixels, whatever the model
MAX_STEPS = 1000
MAX_PROMPT_CHARS = 20_000  # a prompt or negative prompt; a server's `Limits` lower it
DEFAULTS = {"steps": 20, "guidance_scale": 5.0, "sampler": "dpmpp_2m_karras"}  # when a model file names none


@dataclass(frozen=True)
class Request:
    """One generation as asked for. None means "the model's default"; `seed` None or -1 a random one.

    Image k of `num_images` uses seed + k; `batch_size` bounds how many share one network call.
    `strength` applies with a start image (img2img). `subject`: "auto" draws the nearest subject of
    a model with a subject index (the built-in one), "off" the prompt's own words, any other text
    that text's words (`noisecraft.text.subjects`). `scheduler` (automatic, karras, exponential) picks
    the sampler's step spacing, as A1111's separate scheduler field does.
    """

    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    guidance_scale: float | None = None
    guidance_rescale: float = 0.0
    sampler: str | None = None
    scheduler: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    num_images: int = 1
    batch_size: int = 16
    strength: float | None = None
    subject: str | None = "auto"


@dataclass(frozen=True)
class Settings:
    """A `Request` after `resolve`: every value checked and filled in, ready to draw."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    guidance_rescale: float
    sampler: SamplerSpec
    width: int
    height: int
    seed: int
    num_images: int
    batch_size: int
    strength: float | None  # set exactly when drawing from a start image
    subject: str | None  # the words the UNet reads instead of the prompt's; None: the prompt's own
    sigmas: torch.Tensor = field(compare=False, repr=False)  # the float64 sigma walk (img2img: its last part)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.num_images)]

    def part(self, start: int, count: int) -> "Settings":
        """Images start .. start + count - 1 of these settings, as settings of their own (no new checks)."""
        return dataclasses.replace(self, seed=self.seed + start, num_images=count)


@dataclass(frozen=True)
class Limits:
    """An operator's bounds on top of what the model allows (`noisecraft serve`'s are the defaults)."""

    max_steps: int = 150
    max_images: int = 16
    max_side: int | None = None  # None: 8x the model's native size, at most MAX_SIDE
    max_prompt_chars: int = 2000

    def side(self, image_size: int) -> int:
        return self.max_side or min(MAX_SIDE, 8 * int(image_size or 512))


@dataclass(frozen=True)
class ModelTraits:
    """What a loaded model accepts: what `resolve` checks a request against."""

    defaults: Mapping
    image_size: int
    size_factor: int  # width and height must be multiples of this
    conditional: bool  # reads a prompt (has a text encoder)
    latent: bool  # has an autoencoder, so it can start from a picture
    sampling: Callable  # (spec, steps, width, height, strength) -> (spec as it runs, float64 sigmas): `ModelConfig.sampling`
    subject: Callable[[str, str | None], str | None]  # (prompt, Request.subject) -> Settings.subject
    negative: bool = True  # reads a negative prompt (FLUX.1, distilled from guided outputs, does not)


def resolve(request: Request, model: ModelTraits, limits: Limits | None = None,
            init_size: tuple[int, int] | None = None, masked: bool = False) -> Settings:
    """Check `request` against the model (and `limits`) and fill in its defaults; raise `UserError`.

    `init_size` is the start picture's (width, height) for img2img: it sets the default size
    (rounded down to the model's multiple) and makes `strength` (default 0.75) apply. `masked`:
    a mask comes with it (inpainting).
    """
    r, defaults = request, model.defaults
    if masked and init_size is None:
        raise UserError("a mask needs the image it applies to (--init-image)", field="mask_image")
    if init_size is not None and not model.latent:
        raise UserError("img2img needs a latent model with an autoencoder; this pixel model has none", field="init_image")
    longest = limits.max_prompt_chars if limits else MAX_PROMPT_CHARS
    _check_text(r.prompt, "the prompt", "prompt", longest)
    if model.conditional and not r.prompt.strip():
        raise UserError("the prompt is empty; describe the picture you want", field="prompt")
    if r.negative_prompt is not None:
        _check_text(r.negative_prompt, "the negative prompt", "negative_prompt", longest)
    if r.subject is not None:
        _check_text(r.subject, "subject", "subject", longest)
    max_steps = min(MAX_STEPS, limits.max_steps) if limits else MAX_STEPS
    steps = defaults.get("steps", DEFAULTS["steps"]) if r.steps is None else r.steps
    if not _whole(steps) or not 1 <= steps <= max_steps:
        kind = "" if limits else "a whole number "
        raise UserError(f"steps must be {kind}from 1 to {max_steps}, not {steps!r}", field="steps")
    guidance = defaults.get("guidance_scale", DEFAULTS["guidance_scale"]) if r.guidance_scale is None else r.guidance_scale
    if not _number(guidance) or not 0.0 <= guidance <= 100.0:
        raise UserError(f"guidance scale must be a number from 0 to 100, not {_shown(guidance)}", field="guidance_scale")
    if not _number(r.guidance_rescale) or not 0.0 <= r.guidance_rescale <= 1.0:
        raise UserError(f"guidance rescale must be from 0 to 1, not {_shown(r.guidance_rescale)}", field="guidance_rescale")
    spec = resolve_sampler(r.sampler or defaults.get("sampler", DEFAULTS["sampler"]), r.scheduler)
    factor, width, height, strength = model.size_factor, r.width, r.height, r.strength
    if init_size is not None:  # default to the start image's size, rounded down to what the model takes
        width = max(factor, init_size[0] // factor * factor) if width is None else width
        height = max(factor, init_size[1] // factor * factor) if height is None else height
        strength = 0.75 if strength is None else strength
        if not _number(strength) or not 0.0 < strength <= 1.0:
            raise UserError(f"strength (denoising strength) must be a number above 0 and at most 1, not {strength!r}", field="strength")
        strength = float(strength)
    elif strength is not None:
        raise UserError("strength only applies with a start image (--init-image)", field="strength")
    width = model.image_size if width is None else width
    height = model.image_size if height is None else height
    largest = limits.side(model.image_size) if limits else MAX_SIDE
    for label, side in (("width", width), ("height", height)):
        if not _whole(side) or side <= 0:
            raise UserError(f"{label} must be a positive whole number of pixels, not {side!r}", field=label)
        if side % factor:
            raise UserError(f"{label} {side} is not a multiple of {factor}, which this model needs; try {max(factor, round(side / factor) * factor)}", field=label)
        if side > largest:
            where = "this server allows for this model" if limits else "noisecraft allows; lower --size"
            raise UserError(f"{label} {side} is larger than the {largest} pixels {where}", field=label)
    if not _whole(r.num_images) or r.num_images < 1:
        raise UserError(f"the number of images must be a whole number of at least 1, not {r.num_images!r}", field="num_images")
    most = limits.max_images if limits else math.inf
    if not _whole(r.batch_size) or not 1 <= r.batch_size <= most:
        bound = f"from 1 to {most}" if limits else "a whole number of at least 1"
        raise UserError(f"batch_size must be {bound}, not {r.batch_size!r}", field="batch_size")
    if r.num_images > most:
        raise UserError(f"{r.num_images} images were asked for; this server makes at most {most} per request", field="num_images")
    seed = random.randrange(2**32) if r.seed is None or r.seed == -1 else r.seed
    if not _whole(seed) or not 0 <= seed < 2**63:
        raise UserError(f"seed must be a whole number from 0 (or -1 for random), not {seed!r}", field="seed")
    spec, sigmas = model.sampling(spec, steps, width, height, strength if init_size is not None else None)
    negative = (r.negative_prompt or "") if model.negative else ""
    return Settings(r.prompt, negative, steps, float(guidance), float(r.guidance_rescale), spec, width, height,
                    seed, r.num_images, r.batch_size, strength, model.subject(r.prompt, r.subject), sigmas)


def parameters_text(s: Settings, seed: int, *, model_name: str, model_hash: str = "",
                    loras: list[tuple[str, float, str]] = (), extra: dict | None = None) -> str:
    """The A1111 ``parameters`` text of image `seed` of `s` (`pngmeta` writes it into the PNG); `extra`
    adds fields before Version (label -> value, spaces as underscores as in `format_parameters`)."""
    return format_parameters(
        s.prompt, s.negative_prompt, Steps=s.steps, Sampler=s.sampler.a1111_name, CFG_scale=s.guidance_scale,
        Seed=seed, Size=f"{s.width}x{s.height}", Model_hash=model_hash or None, Model=model_name,
        Denoising_strength=s.strength, CFG_Rescale_phi=s.guidance_rescale or None, Subject=s.subject,
        Lora=", ".join(f"{name}: {scale:g}" for name, scale, _ in loras) or None,
        Lora_hashes=", ".join(f"{name}: {short}" for name, _, short in loras) or None,
        **{key.replace(" ", "_"): value for key, value in (extra or {}).items()}, Version=f"noisecraft {__version__}")


def _check_text(text, what: str, field: str, longest: int) -> None:
    """Text a tokenizer and a PNG can take: a str, not too long, encodable as UTF-8 (no lone surrogates)."""
    if not isinstance(text, str):
        raise UserError(f"{what} must be text", field=field)
    if len(text) > longest:
        raise UserError(f"{what} is {len(text)} characters long; at most {longest} are taken", field=field)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UserError(f"{what} holds something that is not text at character {error.start + 1} "
                        "(invalid UTF-8 or a lone surrogate); type or paste it again", field=field) from None


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value) -> str:
    return str(float(value)) if _number(value) or isinstance(value, float) else repr(value)
