"""AUTOMATIC1111's request and response JSON, and the `Request` an A1111 request asks for.

Field names and defaults follow A1111's ``/sdapi/v1`` models; fields noisecraft does not use
(hires fix, styles, scripts, extensions) are accepted and ignored. Missing values take the model's
defaults. Pydantic checks the types; `Pipeline.resolve` checks the values (against the model and
the server's `Limits`), each error naming the A1111 field as FastAPI's 422 responses do.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..brand import brand_prompt
from ..settings import Request, Settings
from ..version import __version__

TASK_ID = r"^[A-Za-z0-9_.\-()]{1,80}$"
MAX_OVERRIDE_DEPTH = 4  # override_settings holds A1111 options: names to values, a list or a small dict at most
MAX_OVERRIDE_ITEMS = 256


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
    styles: list[str] = Field(default_factory=list, description="presets to apply (names from /sdapi/v1/prompt-styles)")
    brand: str | None = Field(None, description="noisecraft: a brand kit's name (GET /brands): its words, then its colour step")
    alwayson_scripts: dict[str, Any] | None = Field(None, description="the ControlNet extension's units "
                                                    "({\"controlnet\": {\"args\": [...]}}); other scripts are ignored")
    enable_hr: bool = Field(False, description="hires fix: draw, upscale by hr_scale, redraw at denoising_strength")
    hr_scale: float = 2.0
    hr_upscaler: str | None = Field(None, description="a name from /sdapi/v1/upscalers; Latent modes are done as Lanczos")
    hr_second_pass_steps: int = Field(0, description="0: as many as the first pass")
    hr_resize_x: int = Field(0, description="hires target width (instead of hr_scale)")
    hr_resize_y: int = 0
    denoising_strength: float | None = Field(None, description="img2img strength; txt2img: the hires fix's (0.7)")


    @field_validator("override_settings")
    @classmethod
    def _override_settings_are_options(cls, value):
        if value is not None:
            depth, items = _shape(value)
            if depth > MAX_OVERRIDE_DEPTH or items > MAX_OVERRIDE_ITEMS:
                raise ValueError(f"override_settings holds A1111 options (names to values); this one is nested {depth} deep "
                                 f"with {items} values (at most {MAX_OVERRIDE_DEPTH} and {MAX_OVERRIDE_ITEMS})")
        return value


def _shape(value) -> tuple[int, int]:
    """(nesting depth, number of values) of a JSON value, without recursion."""
    depth, items, stack = 0, 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        items += 1
        depth = max(depth, level)
        if items > MAX_OVERRIDE_ITEMS or depth > MAX_OVERRIDE_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack += [(child, level + 1) for child in children]
    return depth, items


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


class ExtrasRequest(BaseModel):
    """A1111's extra-single-image: pixels only (no diffusion), by `upscaling_resize` or to a size."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    image: str
    resize_mode: int = Field(0, description="0: by upscaling_resize; 1: to upscaling_resize_w x _h")
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = 0.0


def to_request(req: GenerationRequest, presets: list = (), kit=None) -> Request:
    """The noisecraft `Request` an A1111 request asks for: batch_size x n_iter images, batch_size per call,
    its `styles` applied (from `presets`), then the brand `kit`'s words."""
    img2img = getattr(req, "init_images", None) is not None
    prompt, negative = brand_prompt(kit, req.prompt or "", req.negative_prompt or "", req.styles, list(presets))
    return Request(prompt=prompt, negative_prompt=negative, steps=req.steps,
                   guidance_scale=req.cfg_scale, guidance_rescale=req.guidance_rescale,
                   sampler=req.sampler_name or req.sampler_index or None, scheduler=req.scheduler,
                   width=req.width, height=req.height, seed=req.seed, num_images=req.batch_size * req.n_iter,
                   batch_size=req.batch_size, strength=req.denoising_strength if img2img else None, subject=req.subject)


def info_json(s: Settings, pipe, images: list, *, interrupted: bool = False) -> str:
    """A1111's `info` string: the settings as used, every seed, and each image's infotext."""
    info = {
        "prompt": s.prompt, "all_prompts": [s.prompt] * s.num_images,
        "negative_prompt": s.negative_prompt, "all_negative_prompts": [s.negative_prompt] * s.num_images,
        "seed": s.seed, "all_seeds": s.seeds, "subseed": -1, "all_subseeds": [-1] * s.num_images,
        "subseed_strength": 0, "width": s.width, "height": s.height, "sampler_name": s.sampler.a1111_name,
        "cfg_scale": s.guidance_scale, "steps": s.steps, "batch_size": s.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": getattr(pipe, "name", None), "sd_model_hash": getattr(pipe, "hash", None),
        "sd_vae_name": None, "sd_vae_hash": None, "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": s.strength or 0,
        "extra_generation_params": {"Subject": s.subject} if s.subject else {},
        "index_of_first_image": 0, "infotexts": [image.info.get("parameters", "") for image in images],
        "styles": [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": f"noisecraft {__version__}",
        "interrupted": interrupted,
    }
    return json.dumps(info)
