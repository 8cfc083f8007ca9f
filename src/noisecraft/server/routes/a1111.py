"""AUTOMATIC1111's ``/sdapi/v1`` API: txt2img, img2img, progress, interrupt, models, samplers, options, PNG info."""

from __future__ import annotations

import time

from fastapi import APIRouter, Body, Depends, Request
from starlette.concurrency import run_in_threadpool

from PIL import Image

from ...pngmeta import parse_parameters
from ...upscale import MAX_SCALE, enlarge, upscaler_name
from ...samplers import SAMPLERS, SCHEDULERS
from ..context import Context, context
from .. import controlnets, upscalers
from ..encoding import decode_image, png_base64
from ..errors import FieldError
from ..generation import answer, generate, submit_and_wait, unknown_model
from ..jobs import Job, Upscale
from ..schemas import ExtrasRequest, GenerationRequest, ImageResponse, Img2ImgRequest, OptionsUpdate, PngInfoRequest

router = APIRouter(tags=["A1111"])
MAX_EXTRAS_SIDE = 8192


@router.post("/sdapi/v1/txt2img", response_model=ImageResponse)
async def txt2img(request: Request, req: GenerationRequest = Body(...), ctx: Context = Depends(context)):
    """Pictures from a prompt; A1111's request and response JSON. `enable_hr`: the hires fix (each picture
    upscaled by `hr_scale` or to `hr_resize_x` x `hr_resize_y`, then redrawn tile by tile at `denoising_strength`)."""
    return await generate(ctx, request, req, upscale=hires(req, ctx) if req.enable_hr else None)


def hires(req: GenerationRequest, ctx: Context) -> Upscale:
    """The second pass a txt2img request's hires-fix fields ask for."""
    scale = req.hr_scale
    if req.hr_resize_x or req.hr_resize_y:  # A1111: a target size instead of a factor (the larger ratio wins)
        if not req.width and not req.height:
            raise FieldError("hr_resize_x", "hr_resize_x/hr_resize_y need width and height for the first pass")
        scale = max(req.hr_resize_x / (req.width or req.height), req.hr_resize_y / (req.height or req.width))
    if not 1 <= scale <= MAX_SCALE:
        raise FieldError("hr_scale", f"hr_scale must be from 1 to {MAX_SCALE}, not {scale:g}")
    strength = 0.7 if req.denoising_strength is None else req.denoising_strength
    if not 0 <= strength <= 1:
        raise FieldError("denoising_strength", f"denoising_strength must be from 0 to 1, not {strength:g}")
    if not 0 <= req.hr_second_pass_steps <= ctx.settings.limits.max_steps:
        raise FieldError("hr_second_pass_steps", f"hr_second_pass_steps must be from 0 to {ctx.settings.limits.max_steps}")
    return Upscale(scale, strength, upscalers.pick(req.hr_upscaler, ctx.settings.upscalers, "hr_upscaler"),
                   req.hr_second_pass_steps or None)


@router.post("/sdapi/v1/img2img", response_model=ImageResponse)
async def img2img(request: Request, req: Img2ImgRequest = Body(...), ctx: Context = Depends(context)):
    """Pictures from a start image (`init_images[0]`), optionally repainting only inside `mask`."""
    if len(req.init_images) != 1:
        raise FieldError("init_images", f"init_images must hold exactly one picture, not {len(req.init_images)}")
    init = await run_in_threadpool(decode_image, req.init_images[0], ("init_images", 0))
    mask = None
    if req.mask:
        mask = await run_in_threadpool(decode_image, req.mask, ("mask",))
        if req.inpainting_mask_invert:
            from PIL import ImageOps

            mask = ImageOps.invert(mask.convert("L"))
    return await generate(ctx, request, req, init, mask)


@router.get("/sdapi/v1/upscalers")
async def upscaler_list(ctx: Context = Depends(context)):
    """The upscalers hires fix and extras take: None, the resamplers, and the server's upscaler files."""
    return upscalers.listing(ctx.settings.upscalers)


@router.get("/sdapi/v1/latent-upscale-modes")
async def latent_modes():
    return [{"name": name} for name in upscalers.LATENT_MODES]


@router.post("/sdapi/v1/extra-single-image")
async def extra_single_image(req: ExtrasRequest = Body(...), ctx: Context = Depends(context)):
    """A1111's Extras tab: a picture enlarged by a resampler or an upscaler file (pixels only, no model)."""
    image = await run_in_threadpool(decode_image, req.image, ("image",))
    first = upscalers.pick(req.upscaler_1, ctx.settings.upscalers, "upscaler_1")
    if req.resize_mode == 1:
        width, height = req.upscaling_resize_w, req.upscaling_resize_h
    else:
        if not 1 <= req.upscaling_resize <= MAX_SCALE:
            raise FieldError("upscaling_resize", f"upscaling_resize must be from 1 to {MAX_SCALE}, not {req.upscaling_resize:g}")
        width, height = round(image.width * req.upscaling_resize), round(image.height * req.upscaling_resize)
    if not (1 <= width <= MAX_EXTRAS_SIDE and 1 <= height <= MAX_EXTRAS_SIDE):
        raise FieldError("upscaling_resize", f"the result would be {width}x{height}; each side must be from 1 to {MAX_EXTRAS_SIDE}")

    def work():
        big = fit(image, width, height, first, crop=req.resize_mode == 1 and req.upscaling_crop)
        if req.upscaler_2 not in (None, "None") and req.extras_upscaler_2_visibility > 0:
            second = upscalers.pick(req.upscaler_2, ctx.settings.upscalers, "upscaler_2")
            other = fit(image, width, height, second, crop=req.resize_mode == 1 and req.upscaling_crop)
            big = Image.blend(big, other, min(1.0, req.extras_upscaler_2_visibility))
        return png_base64(big)

    return {"html_info": f"<p>{upscaler_name(first)} to {width}x{height}</p>", "image": await run_in_threadpool(work)}


def fit(image, width: int, height: int, upscaler, crop: bool):
    """`image` enlarged to width x height; with `crop`, enlarged to cover it and cut to it (A1111's crop)."""
    if not crop:
        return enlarge(image, width, height, upscaler)
    ratio = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * ratio)), max(height, round(image.height * ratio))
    big = enlarge(image, w, h, upscaler)
    left, top = (w - width) // 2, (h - height) // 2
    return big.crop((left, top, left + width, top + height))


@router.get("/controlnet/model_list")
async def controlnet_models(ctx: Context = Depends(context)):
    """The ControlNet extension's model list: the files this server offers (`serve --controlnet`)."""
    return {"model_list": list(ctx.settings.controlnets)}


@router.get("/controlnet/module_list")
async def controlnet_modules():
    """The preprocessors: canny (edges found here), tile_resample, and none or a map's kind for maps you made."""
    return controlnets.module_list()


@router.get("/controlnet/version")
async def controlnet_version():
    return {"version": 2}


@router.post("/controlnet/detect")
async def controlnet_detect(body: dict = Body(...)):
    """The pictures as a preprocessor turns them into control maps (`controlnet_module`, `controlnet_images`)."""
    from ...control import preprocess

    module = str(body.get("controlnet_module", "none")).lower()
    if module not in controlnets.MODULES:
        raise FieldError("controlnet_module", f"module {module!r} needs a detector model noisecraft cannot download here")
    pictures = body.get("controlnet_images")
    if not isinstance(pictures, list) or not 1 <= len(pictures) <= controlnets.MAX_UNITS:
        raise FieldError("controlnet_images", f"send 1 to {controlnets.MAX_UNITS} pictures as controlnet_images")
    low, high = (controlnets.threshold(body.get(k), d) for k, d in (("controlnet_threshold_a", 100), ("controlnet_threshold_b", 200)))

    def work():
        return [png_base64(preprocess(decode_image(p, ("controlnet_images", k)), controlnets.MODULES[module], low, high))
                for k, p in enumerate(pictures)]

    return {"images": await run_in_threadpool(work), "info": "Success"}


@router.get("/sdapi/v1/progress")
async def progress(skip_current_image: bool = False, ctx: Context = Depends(context)):
    """The running job: fraction done, seconds left, and (unless skipped) the picture so far."""
    running, waiting = ctx.pool.queue.snapshot()
    job = running[0] if running else None
    state = {"skipped": False, "interrupted": bool(job and job.cancelled), "stopping_generation": False,
             "job": job.id if job else "", "job_count": (job.chunks if job else 0) + waiting,
             "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": job.chunk if job else 0,
             "sampling_step": job.step if job else 0, "sampling_steps": job.steps if job else 0}
    image = None
    if job is not None and not skip_current_image:
        image = await run_in_threadpool(ctx.previews.get, job)
    return {"progress": job.fraction if job else 0.0, "eta_relative": eta(job), "state": state, "current_image": image,
            "textinfo": None}


def eta(job: Job | None) -> float:
    """Seconds left for a running job, from its pace so far."""
    if job is None or not job.started or job.fraction <= 0:
        return 0.0
    elapsed = time.monotonic() - job.started
    return round(max(0.0, elapsed / job.fraction - elapsed), 2)


@router.post("/sdapi/v1/interrupt")
async def interrupt(ctx: Context = Depends(context)):
    """Stop the running job(s) within one sampling step; the queue moves on."""
    return {"interrupted": ctx.pool.queue.interrupt_running("interrupted")}


@router.get("/sdapi/v1/sd-models")
async def sd_models(ctx: Context = Depends(context)):
    return [{"title": e.title, "model_name": e.name, "hash": e.hash or None, "sha256": None,
             "filename": e.filename, "config": None} for e in ctx.pool.catalog.entries]


@router.get("/sdapi/v1/samplers")
async def samplers():
    return [{"name": spec.a1111_name, "aliases": [spec.name], "options": {}} for spec in SAMPLERS.values()]


@router.get("/sdapi/v1/schedulers")
async def schedulers():
    return [{"name": name, "label": name.capitalize(), "aliases": None, "default_rho": -1, "need_inner_model": False}
            for name in SCHEDULERS]


@router.get("/sdapi/v1/prompt-styles")
async def prompt_styles(ctx: Context = Depends(context)):
    """The presets, as A1111 lists its styles (`styles` in txt2img/img2img applies them by name)."""
    return [{"name": p.label, "prompt": p.prompt, "negative_prompt": p.negative} for p in ctx.settings.presets]


@router.get("/sdapi/v1/scripts")
async def scripts():
    return {"txt2img": [], "img2img": []}


@router.get("/sdapi/v1/options")
async def get_options(ctx: Context = Depends(context)):
    current = ctx.pool.current
    return {"sd_model_checkpoint": current.title, "sd_checkpoint_hash": current.hash or None,
            "samples_format": "png", "live_previews_enable": True, "show_progress_every_n_steps": 1,
            "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"}


@router.post("/sdapi/v1/options")
async def set_options(request: Request, update: OptionsUpdate = Body(...), ctx: Context = Depends(context)):
    """Switch the model (`sd_model_checkpoint`: a title, name or hash from sd-models); other options are ignored."""
    pool = ctx.pool
    if update.sd_model_checkpoint:
        entry = pool.catalog.find(update.sd_model_checkpoint)
        if entry is None:
            raise FieldError("sd_model_checkpoint", unknown_model(update.sd_model_checkpoint, pool.catalog))
        if entry != pool.current or pool.loaded(entry) is None:
            failure = await submit_and_wait(ctx, Job(entry, kind="load"), request)
            if failure is not None:
                return answer(failure)
        pool.current = entry
    return None


@router.post("/sdapi/v1/png-info")
async def png_info(req: PngInfoRequest):
    """The generation parameters stored in a PNG (A1111's 'PNG Info')."""
    image = await run_in_threadpool(decode_image, req.image, ("image",))
    text = image.info.get("parameters") or ""
    items = {k: v for k, v in image.info.items() if isinstance(v, str)}
    return {"info": text, "items": items, "parameters": parse_parameters(text) if text else {}}
