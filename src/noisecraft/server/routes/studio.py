"""The studio's API (the page's Midjourney workflow): imagine a 2x2 grid, then upscale, vary, vary a
region, zoom out or pan any picture in the gallery. Each answer is the new pictures' gallery items,
each with its lineage (parent, operation, strength). The operations themselves: `noisecraft.studio`."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ... import studio
from ...brand import brand_prompt
from ...errors import UserError
from ...images import load_picture
from ...settings import Request as DrawRequest
from ...upscale import CREATIVE, SUBTLE
from .. import controlnets
from ..context import Context, context
from ..encoding import decode_image
from ..errors import FieldError
from ..schemas import TASK_ID
from ..generation import answer, brand_of, draw
from ..signing import carries_credentials, identity, signs
from ..jobs import Job, Upscale
from ...gallery.pictures import request_of
from ..library import remember
from .gallery import NO_GALLERY, missing, shown

router = APIRouter(prefix="/studio", tags=["studio"])
UPSCALES = {"subtle": SUBTLE, "creative": CREATIVE}


class Imagine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="what to draw, with Midjourney's flags: --ar 16:9 --seed 7 --no text --chaos 20 --q 2")
    negative_prompt: str = Field("", description="added to --no")
    brand: str | None = Field(None, description="a brand kit's name (GET /brands): its words, then its colour step")
    control: dict[str, Any] | None = Field(None, description="keep the shape of a photo: an A1111 ControlNet unit "
                                           "{image (base64), model (GET /controlnet/model_list), module (canny), weight}")
    task_id: str | None = Field(None, pattern=TASK_ID, description="your id for this job, for GET /queue and its cancel")


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: str | None = Field(None, description="vary: subtle or strong; upscale: subtle or creative")
    prompt: str | None = Field(None, description="remix: a new prompt for the new pictures")
    mask: str | None = Field(None, description="vary (region): base64 PNG, white where to repaint")
    factor: float | None = Field(None, description="zoom out: 1.5 or 2")
    direction: str | None = Field(None, description="pan: left, right, up or down")
    seed: int | None = Field(None, description="the new pictures' first seed (default: random)")
    task_id: str | None = Field(None, pattern=TASK_ID, description="your id for this job, for GET /queue and its cancel")


@router.post("/imagine")
async def imagine(request: Request, body: Imagine = Body(...), ctx: Context = Depends(context)):
    """A fresh grid of four from a prompt with Midjourney's flags."""
    if ctx.gallery is None:
        raise FieldError("prompt", NO_GALLERY)
    try:
        prompt, flags = studio.parse(body.prompt)
    except UserError as error:
        raise FieldError("prompt", str(error)) from None
    pipe = ctx.pool.traits()
    step = studio.imagine(prompt, flags, pipe.config.image_size, pipe.size_factor, pipe.defaults)
    kit = brand_of(ctx, body.brand)
    try:
        words, negative = brand_prompt(kit, step.request.prompt, ", ".join(filter(None, [flags.no, body.negative_prompt])),
                                       [], ctx.settings.presets)
    except UserError as error:
        raise FieldError("prompt", str(error)) from None
    step.request = dataclasses.replace(step.request, prompt=words, negative_prompt=negative)
    controls = [await run_in_threadpool(controlnets.unit_of, body.control, ctx.settings.controlnets, ("control",))] \
        if body.control else None
    return await run(ctx, request, step, None, flags=flags, task_id=body.task_id, touch_up=kit.finish if kit else None,
                     signer=identity(ctx, kit) if signs(ctx, kit) else None, controls=controls)


@router.post("/{item_id}/{operation}")
async def change(item_id: int, operation: str, request: Request, body: Change = Body(Change()), ctx: Context = Depends(context)):
    """upscale, vary, region, zoom or pan the gallery picture `item_id`."""
    if ctx.gallery is None:
        raise FieldError("item_id", NO_GALLERY)
    item = await run_in_threadpool(ctx.gallery.get, item_id)
    if item is None:
        return missing(item_id)
    parent = await run_in_threadpool(load_picture, ctx.gallery.path(item), f"gallery picture {item.id}")
    source = await run_in_threadpool(ctx.gallery.path(item).read_bytes)
    signer = identity(ctx) if signs(ctx) or carries_credentials(source) else None  # a signed parent: a signed edit
    made = request_of(item)
    pipe = ctx.pool.traits()
    try:
        if operation == "upscale":
            mode = body.mode or "subtle"
            if mode not in UPSCALES:
                raise FieldError("mode", f"upscale takes subtle or creative, not {mode!r}")
            job = Job(ctx.pool.current, kind="upscale", request=dataclasses.replace(made, prompt=_remix(body, made)),
                      init_image=parent, limits=ctx.settings.limits, upscale=Upscale(2, UPSCALES[mode]),
                      signer=signer, source=source)
            job.id = body.task_id or job.id
            return await _finish(ctx, request, job, item, f"upscale ({mode})", UPSCALES[mode])
        if operation == "vary":
            step = studio.vary(parent, made, body.mode or "subtle", body.seed, body.prompt)
        elif operation == "region":
            if not body.mask:
                raise FieldError("mask", "vary (region) needs a mask: paint where the picture should change")
            mask = await run_in_threadpool(decode_image, body.mask, ("mask",))
            step = studio.region(parent, mask, made, body.seed, body.prompt)
        elif operation == "zoom":
            step = studio.zoom_out(parent, made, body.factor or 2.0, body.seed, pipe.size_factor, body.prompt)
        elif operation == "pan":
            step = studio.pan(parent, made, body.direction or "", body.seed, pipe.size_factor, body.prompt)
        else:
            raise _unknown(operation)
    except UserError as error:
        if isinstance(error, FieldError):
            raise
        raise FieldError(error.field or "body", str(error)) from None
    return await run(ctx, request, step, item, task_id=body.task_id, signer=signer, source=source)


async def run(ctx: Context, request: Request, step: studio.Step, parent, flags: studio.Flags | None = None,
              task_id: str | None = None, touch_up=None, signer=None, source: bytes | None = None, controls=None):
    """Draw a studio step (four pictures; one job per guidance scale when --chaos spreads them) into the gallery."""
    scales = step.guidance or [None]
    share = step.request.num_images // len(scales)
    jobs, items = [], []
    for k, guidance in enumerate(scales):
        part = step.request if guidance is None else dataclasses.replace(
            step.request, guidance_scale=guidance, num_images=share, batch_size=share,
            seed=None if step.request.seed is None else step.request.seed + k * share)
        if guidance is not None and step.request.seed is None and jobs:  # a random first seed: the others follow it
            part = dataclasses.replace(part, seed=jobs[0].settings.seed + k * share)
        job = Job(ctx.pool.current, request=part, init_image=step.init, mask_image=step.mask, limits=ctx.settings.limits,
                  touch_up=touch_up, signer=signer, source=source, controls=controls)
        if task_id:  # with --chaos the grid is several jobs: the id names each in turn
            job.id = task_id
        failure = await _draw(ctx, request, job)
        if failure is not None:
            return failure
        images = job.images
        if step.mask is not None:  # outside the mask the pictures are the parent's own pixels
            images = await run_in_threadpool(lambda: [studio.keep_outside(step.init, i, step.mask) for i in job.images])
        items += await remember(ctx, job, images, source="page", operation=step.operation,
                                parent_id=parent.id if parent else None, strength=step.strength)
        jobs.append(job)
        job.on_done(job.release)
    return {"items": [shown(i) for i in items if i is not None], "operation": step.operation,
            "parent": parent.id if parent else None, "chaos": flags.chaos if flags else None,
            "guidance": step.guidance or None}


async def _finish(ctx: Context, request: Request, job: Job, parent, operation: str, strength: float):
    failure = await _draw(ctx, request, job)
    if failure is not None:
        return failure
    try:
        items = await remember(ctx, job, job.images, source="page", operation=operation, parent_id=parent.id,
                               strength=strength)
        return {"items": [shown(i) for i in items if i is not None], "operation": operation, "parent": parent.id,
                "how": job.images[0].info.get("upscaled") if job.images else None}
    finally:
        job.on_done(job.release)


async def _draw(ctx: Context, request: Request, job: Job):
    """None when the job succeeded; else the answer to send."""
    try:
        failure = await draw(ctx, job, request)
    except UserError as error:
        raise FieldError(error.field or "body", str(error)) from None
    return answer(failure) if failure is not None else None


def _remix(body: Change, made: DrawRequest) -> str:
    return made.prompt if body.prompt is None else body.prompt


def _unknown(operation: str) -> FieldError:
    return FieldError("operation", f"unknown studio operation {operation!r}; choose upscale, vary, region, zoom or pan")
