"""AUTOMATIC1111's request and response JSON, and turning a request into a validated `Plan`.

Field names and defaults follow A1111's ``/sdapi/v1`` models; fields noisecraft does not use
(hires fix, styles, scripts, extensions) are accepted and ignored. Missing values take the model's
defaults. Every value is checked before any compute: the server's own limits here, the model's
through `Pipeline.settings`, each error naming the field as FastAPI's 422 responses do.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image, PngImagePlugin
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..samplers import resolve_sampler
from .worker import FieldError

MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096
SCHEDULERS = {"automatic": "", "karras": "Karras", "exponential": "Exponential"}
TASK_ID = r"^[A-Za-z0-9_.\-()]{1,80}$"


class GenerationRequest(BaseModel):
    """The fields of A1111's txt2img request that noisecraft reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str | None = ""
    negative_prompt: str | None = ""
    seed: int | None = Field(-1, description="-1 or missing: random; image k of the request uses seed + k")
    sampler_name: str | None = Field(None, description="e.g. 'Euler a', 'DPM++ 2M Karras' or 'dpmpp_2m_karras'")
    sampler_index: str | None = Field(None, description="older A1111 name for sampler_name")
    scheduler: str | None = Field(None, description="automatic, karras or exponential")
    batch_size: int = Field(1, description="images per network call")
    n_iter: int = Field(1, description="how many batches")
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    guidance_rescale: float = Field(0.0, description="noisecraft: CFG rescale phi, 0..1")
    subject: str = Field("auto", description="noisecraft: 'auto' draws the nearest subject a model with a subject "
                                             "index knows (the built-in one), 'off' the prompt's own words")
    override_settings: dict[str, Any] | None = Field(None, description="only sd_model_checkpoint is read")
    send_images: bool = True
    save_images: bool = Field(False, description="ignored: the server never writes files")
    force_task_id: str | None = Field(None, pattern=TASK_ID, description="your id for this job, for GET /queue")


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] = Field(default_factory=list, description="one base64 PNG/JPEG (a data: URL is fine)")
    mask: str | None = Field(None, description="base64 mask: white is repainted")
    denoising_strength: float | None = 0.75
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


class ImageResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs, each with the A1111 'parameters' text chunk")
    parameters: dict[str, Any]
    info: str = Field(description="JSON text: seed, all_seeds, infotexts, ... as A1111 returns it")


class OptionsUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sd_model_checkpoint: str | None = None


class PngInfoRequest(BaseModel):
    image: str


@dataclass
class Limits:
    """The server's own bounds, on top of what the model allows."""

    max_steps: int = 150
    max_images: int = 16
    max_side: int | None = None  # None: 8x the model's native size, at most the Pipeline's MAX_SIDE

    def side(self, pipe) -> int:
        if self.max_side:
            return self.max_side
        from ..pipeline import MAX_SIDE

        return min(MAX_SIDE, 8 * int(getattr(pipe.config, "image_size", 512) or 512))


@dataclass
class Plan:
    """A request after validation: the Pipeline's keyword arguments, seeds and batches."""

    kwargs: dict
    seed: int
    count: int
    batch_size: int

    def chunks(self) -> list[tuple[int, int]]:
        return [(self.seed + start, min(self.batch_size, self.count - start)) for start in range(0, self.count, self.batch_size)]

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.count)]

    def describe(self) -> str:
        return f"{self.count} image(s) of {self.kwargs['width']}x{self.kwargs['height']}"


# Pipeline's names for its settings -> the A1111 request fields they come from.
_A1111_FIELD = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "guidance_scale": "cfg_scale",
                "guidance_rescale": "guidance_rescale", "sampler": "sampler_name", "width": "width", "height": "height",
                "num_images": "batch_size", "seed": "seed", "strength": "denoising_strength", "mask_image": "mask",
                "init_image": "init_images"}


def field_of(error: UserError) -> tuple:
    """The request field a `UserError` from `Pipeline` is about, as a 422 `loc` (empty when none)."""
    name = _A1111_FIELD.get(error.field or "")
    return (name,) if name else ()


def resolve_sampler_field(req: GenerationRequest) -> str | None:
    """A1111's sampler (+ separate scheduler since v1.9) as a noisecraft sampler name, or None for the default."""
    name = req.sampler_name or req.sampler_index or None
    scheduler = (req.scheduler or "automatic").strip().lower()
    if scheduler not in SCHEDULERS:
        raise FieldError("scheduler", f"unknown scheduler {req.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
    if name is None:
        return None
    try:
        spec = resolve_sampler(name)
    except UserError as error:
        raise FieldError("sampler_name", str(error)) from None
    suffix = SCHEDULERS[scheduler]
    if suffix and not spec.name.endswith(("_karras", "_exponential")):
        try:
            spec = resolve_sampler(f"{spec.a1111_name} {suffix}")
        except UserError:
            raise FieldError("scheduler", f"the {spec.a1111_name} sampler has no {suffix} schedule here; "
                                          "use scheduler 'automatic' or another sampler") from None
    return spec.name


def build_plan(pipe, req: GenerationRequest, limits: Limits, init_image: Image.Image | None = None,
               mask_image: Image.Image | None = None) -> Plan:
    """Check `req` against the server's limits and the model (`pipe.settings`); raise `FieldError`."""
    if req.steps is not None and not 1 <= req.steps <= limits.max_steps:
        raise FieldError("steps", f"steps must be from 1 to {limits.max_steps}, not {req.steps}")
    if not 1 <= req.batch_size <= limits.max_images:
        raise FieldError("batch_size", f"batch_size must be from 1 to {limits.max_images}, not {req.batch_size}")
    if req.n_iter < 1:
        raise FieldError("n_iter", f"n_iter must be at least 1, not {req.n_iter}")
    count = req.batch_size * req.n_iter
    if count > limits.max_images:
        raise FieldError("n_iter", f"batch_size x n_iter asks for {count} images; this server makes at most "
                                   f"{limits.max_images} per request")
    max_side = limits.side(pipe)
    for name in ("width", "height"):
        value = getattr(req, name)
        if value is not None and value > max_side:
            raise FieldError(name, f"{name} {value} is larger than the {max_side} pixels this server allows for this model")
    sampler = resolve_sampler_field(req)
    seed = None if req.seed is None or req.seed == -1 else req.seed
    img2img = {}
    if init_image is not None:
        img2img = dict(strength=req.denoising_strength, init_size=init_image.size)
    try:
        s = pipe.settings(req.prompt or "", req.negative_prompt or "", req.steps, req.cfg_scale, sampler, req.width,
                          req.height, seed, count, req.guidance_rescale, subject=req.subject, **img2img)
    except UserError as error:
        raise FieldError((field_of(error) or ("body",))[0], str(error)) from None
    for name in ("width", "height"):  # a default taken from the start image
        if getattr(s, name) > max_side:
            raise FieldError(name, f"{name} {getattr(s, name)} is larger than the {max_side} pixels this server allows for this model")
    kwargs = dict(prompt=s.prompt, negative_prompt=s.negative_prompt, steps=s.steps, guidance_scale=s.guidance_scale,
                  sampler=s.sampler, width=s.width, height=s.height, guidance_rescale=s.guidance_rescale,
                  subject=s.subject)
    if init_image is not None:
        kwargs.update(init_image=init_image, strength=getattr(s, "strength", req.denoising_strength), mask_image=mask_image)
    return Plan(kwargs, s.seed, count, req.batch_size)


def decode_image(text: Any, loc: tuple) -> Image.Image:
    """A base64 picture from a request (raw or a data: URL), checked before anything runs."""
    name = ".".join(map(str, loc))
    if not isinstance(text, str) or not text.strip():
        raise FieldError(loc, f"{name} must be a base64-encoded PNG or JPEG")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = "".join(text.split())
    if len(text) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise FieldError(loc, f"{name} is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(loc, f"{name} is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_UPLOAD_PIXELS:
            raise FieldError(loc, f"{name} is {image.width}x{image.height}; send at most {MAX_UPLOAD_PIXELS} pixels")
        image.load()
    except FieldError:
        raise
    except Exception:  # PIL raises many kinds for a file that is not a picture
        raise FieldError(loc, f"{name} is base64 but not a picture noisecraft can read (PNG, JPEG or WebP)") from None
    return image


def png_base64(image: Image.Image) -> str:
    """A PNG with the image's A1111 `parameters` chunk, encoded exactly as `pngmeta.save_png` writes it."""
    info = PngImagePlugin.PngInfo()
    parameters = image.info.get("parameters")
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def info_json(plan: Plan, pipe, images: list[Image.Image], *, interrupted: bool = False) -> str:
    """A1111's `info` string: the settings as used, every seed, and each image's infotext."""
    from .. import __version__

    k = plan.kwargs
    spec = resolve_sampler(k["sampler"])
    info = {
        "prompt": k["prompt"], "all_prompts": [k["prompt"]] * plan.count,
        "negative_prompt": k["negative_prompt"], "all_negative_prompts": [k["negative_prompt"]] * plan.count,
        "seed": plan.seed, "all_seeds": plan.seeds, "subseed": -1, "all_subseeds": [-1] * plan.count,
        "subseed_strength": 0, "width": k["width"], "height": k["height"], "sampler_name": spec.a1111_name,
        "cfg_scale": k["guidance_scale"], "steps": k["steps"], "batch_size": plan.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": getattr(pipe, "name", None), "sd_model_hash": getattr(pipe, "hash", None),
        "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": k.get("strength") or 0,
        "extra_generation_params": {"Subject": k["subject"]} if k.get("subject") else {},
        "index_of_first_image": 0, "infotexts": [image.info.get("parameters", "") for image in images],
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": f"noisecraft {__version__}",
        "interrupted": interrupted,
    }
    return json.dumps(info)
