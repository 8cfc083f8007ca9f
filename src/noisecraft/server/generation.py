"""A generation request's way through the server: pick the model, resolve the request against it
(off the event loop), queue the job, wait for it while watching for the client to leave, answer."""

from __future__ import annotations

import asyncio
import base64
import logging
import time

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..errors import UserError
from . import controlnets, schemas
from .context import Context
from .errors import FieldError, JSONResponse, field_error, field_of, unprocessable
from .library import remember
from .signing import identity, picture_file, signs
from .jobs import SHUTTING_DOWN, Failure, Job, QueueFull, ShuttingDown, Upscale

log = logging.getLogger("noisecraft.server")


def brand_of(ctx: Context, name: str | None):
    """The brand kit named `name` (None: none); an unknown name is a 422 on `brand` that lists the kits."""
    if not name:
        return None
    kit = ctx.settings.brands.get(name)
    if kit is None:
        offered = ", ".join(ctx.settings.brands) or "none (serve --brand DIR offers one)"
        raise FieldError("brand", f"unknown brand kit {name!r}; the kits are: {offered}")
    return kit


def unknown_model(name: str, catalog) -> str:
    return f"unknown model {name!r}; choose one of: {', '.join(e.title for e in catalog.entries)}"


async def generate(ctx: Context, request: Request, req: schemas.GenerationRequest, init=None, mask=None,
                   upscale: Upscale | None = None):
    """Answer a txt2img/img2img request with A1111's response JSON (or a refusal); `upscale`: a second pass."""
    pool = ctx.pool
    entry = pool.current
    wanted = (req.override_settings or {}).get("sd_model_checkpoint")
    if wanted:
        entry = pool.catalog.find(wanted)
        if entry is None:
            raise FieldError(("override_settings", "sd_model_checkpoint"), unknown_model(wanted, pool.catalog))
    kit = brand_of(ctx, req.brand)
    try:
        drawn = schemas.to_request(req, ctx.settings.presets, kit)
    except UserError as error:
        raise FieldError("prompt" if error.field == "prompt" else "styles", str(error)) from None  # a banned word, a preset
    controls = await run_in_threadpool(controlnets.units, req.alwayson_scripts, ctx.settings.controlnets) \
        if req.alwayson_scripts else None
    job = Job(entry, request=drawn, init_image=init, mask_image=mask, limits=ctx.settings.limits, controls=controls or None,
              upscale=upscale, touch_up=kit.finish if kit else None, signer=identity(ctx, kit) if signs(ctx, kit) else None)
    if req.force_task_id:
        job.id = req.force_task_id
    exclude = {"force_task_id"} | ({"init_images", "mask"} if not getattr(req, "include_init_images", False) else set())
    echo = req.model_dump(exclude=exclude)  # the answer's parts that come from the request, made before any work
    started = time.monotonic()
    try:
        try:
            failure = await draw(ctx, job, request)
        except UserError as error:
            raise field_error(error, req.n_iter) from None
        if failure is not None:
            return answer(failure, req.n_iter)
        s = job.settings
        log.info("%s: %s, %d step(s) of %s, %s in %.2f s", job.id[:12], job.describe(), s.steps, s.sampler.name,
                 job.status, time.monotonic() - started)
        await remember(ctx, job, job.images, source="a1111", operation="img2img" if init is not None else "generate",
                       strength=s.strength)
        images = await run_in_threadpool(lambda: [base64.b64encode(picture_file(ctx, job, i)).decode("ascii")
                                                  for i in job.images]) if req.send_images else []
        return {"images": images, "parameters": echo,
                "info": schemas.info_json(s, job.pipe, job.images, interrupted=job.status == "interrupted")}
    finally:
        job.on_done(job.release)  # /queue remembers the job's status, not its pictures or its model


async def draw(ctx: Context, job: Job, request: Request) -> Failure | Response | QueueFull | ShuttingDown | None:
    """Resolve `job` (now, when its model is loaded; raises `UserError`), queue it and wait for it:
    None when it succeeded, else why not (a router turns that into its own answer)."""
    pool = ctx.pool
    if pool.queue.full():
        return pool.queue.refusal()
    pipe = pool.loaded(job.model)
    if pipe is not None and job.kind == "generate":  # else the worker resolves against the model it loads
        job.settings = await asyncio.wrap_future(pool.resolve(pipe, job.request, job.init_image, job.mask_image, job.limits))
    return await submit_and_wait(ctx, job, request)


def answer(failure: Failure | Response | QueueFull | ShuttingDown, n_iter: int = 1) -> Response:
    """The HTTP answer to a job that did not succeed (or was never queued)."""
    if isinstance(failure, Response):
        return failure
    if isinstance(failure, QueueFull):
        return JSONResponse({"detail": str(failure)}, status_code=429, headers={"Retry-After": str(failure.retry_after)})
    if isinstance(failure, ShuttingDown):
        return JSONResponse({"detail": str(failure)}, status_code=503, headers={"Retry-After": "10"})
    if failure.status == 422:
        return unprocessable(failure.loc or field_of(failure.field, n_iter) or ("body",), failure.message)
    return JSONResponse({"detail": failure.message}, status_code=failure.status)


async def submit_and_wait(ctx: Context, job: Job, request: Request) -> Failure | Response | None:
    """Queue `job` and wait for it; a 429 or 499 answer, the job's `Failure`, or None when it succeeded."""
    queue = ctx.pool.queue
    try:
        queue.submit(job)
    except (QueueFull, ShuttingDown) as refused:
        return answer(refused)
    loop, event = asyncio.get_running_loop(), asyncio.Event()
    job.on_done(lambda: loop.call_soon_threadsafe(event.set))
    try:
        while not event.is_set():
            try:
                await asyncio.wait_for(event.wait(), ctx.settings.disconnect_poll_s)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    queue.cancel(job, "the client disconnected")
                    log.info("%s: client disconnected; job dropped", job.id[:12])
                    return Response(status_code=499)
    except asyncio.CancelledError:  # the server stops without waiting longer: nobody is left to answer
        queue.cancel(job, SHUTTING_DOWN)
        raise
    return job.failure
