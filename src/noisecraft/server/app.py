"""The HTTP app: AUTOMATIC1111's ``/sdapi/v1`` API, the queue, and the web page, over a `WorkerPool`.

Thin by design: handlers parse and validate, hand a `Job` to the queue, wait for it while watching
for the client to leave, and encode the pictures. The denoising happens in `Pipeline`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..samplers import SAMPLERS
from . import schemas
from .schemas import GenerationRequest, Img2ImgRequest, ImageResponse, Limits, OptionsUpdate, PngInfoRequest
from .security import ApiKey, AuthMiddleware, documented_auth
from .worker import FieldError, Job, QueueFull, WorkerPool

log = logging.getLogger("noisecraft.server")
STATIC = Path(__file__).parent / "static"
PUBLIC_PATHS = ("/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")  # the page and the API's description
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


@dataclass
class ServerSettings:
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    disconnect_poll_s: float = 0.25
    max_body: int = 64 * 2**20


def create_app(pool: WorkerPool, settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app for a started (or about to start) `pool`."""
    from .. import __version__

    settings = settings or ServerSettings()
    limits = settings.limits
    queue, catalog = pool.queue, pool.catalog
    app = FastAPI(title="noisecraft", version=__version__,
                  description="Text-to-image generation with an AUTOMATIC1111-compatible API. The web page is at /.")
    app.state.pool = pool
    api = APIRouter(dependencies=[Depends(documented_auth)])  # the check itself: AuthMiddleware, below

    # -- errors -----------------------------------------------------------------------------
    @app.exception_handler(FieldError)
    async def field_error(request: Request, error: FieldError):
        return _unprocessable(error.loc, str(error))

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, error: RequestValidationError):
        # FastAPI's shape, without echoing the input back (it may be megabytes of base64)
        detail = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in error.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    # -- generation -------------------------------------------------------------------------
    async def run(request: Request, req: GenerationRequest, init=None, mask=None) -> Any:
        entry = pool.current
        wanted = (req.override_settings or {}).get("sd_model_checkpoint")
        if wanted:
            entry = catalog.find(wanted)
            if entry is None:
                raise FieldError(("override_settings", "sd_model_checkpoint"), _unknown_model(wanted, catalog))
        pipe = pool.loaded(entry)
        if pipe is not None:
            job = Job(entry, plan=schemas.build_plan(pipe, req, limits, init, mask))
        else:  # that model loads when the job runs: validate against it then, still before sampling
            job = Job(entry, prepare=lambda p: schemas.build_plan(p, req, limits, init, mask))
        if req.force_task_id:
            job.id = req.force_task_id
        started = time.monotonic()
        try:
            failure = await _submit_and_wait(job, request)
            if failure is not None:
                return failure
            log.info("%s: %s, %d step(s) of %s, %s in %.2f s", job.id[:12], job.plan.describe(), job.plan.kwargs["steps"],
                     job.plan.kwargs["sampler"], job.status, time.monotonic() - started)
            images = await run_in_threadpool(lambda: [schemas.png_base64(i) for i in job.images]) if req.send_images else []
            exclude = {"force_task_id"} | ({"init_images", "mask"} if not getattr(req, "include_init_images", False) else set())
            return {"images": images, "parameters": req.model_dump(exclude=exclude),
                    "info": schemas.info_json(job.plan, job.pipe, job.images, interrupted=job.status == "interrupted")}
        finally:
            job.on_done(job.release)  # /queue remembers the job's status, not its pictures or its model

    async def _submit_and_wait(job: Job, request: Request) -> Response | None:
        try:
            queue.submit(job)
        except QueueFull as full:
            return JSONResponse({"detail": str(full)}, status_code=429, headers={"Retry-After": str(full.retry_after)})
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        job.on_done(lambda: loop.call_soon_threadsafe(event.set))
        while not event.is_set():
            try:
                await asyncio.wait_for(event.wait(), settings.disconnect_poll_s)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    queue.cancel(job, "the client disconnected")
                    log.info("%s: client disconnected; job dropped", job.id[:12])
                    return Response(status_code=499)
        if job.failure is None:
            return None
        if job.failure.status == 422:
            return _unprocessable(job.failure.loc or ("body",), job.failure.message)
        return JSONResponse({"detail": job.failure.message}, status_code=job.failure.status)

    @api.post("/sdapi/v1/txt2img", response_model=ImageResponse, tags=["A1111"])
    async def txt2img(request: Request, req: GenerationRequest = Body(...)):
        """Pictures from a prompt; A1111's request and response JSON."""
        return await run(request, req)

    @api.post("/sdapi/v1/img2img", response_model=ImageResponse, tags=["A1111"],
              responses={501: {"description": "this model/pipeline cannot start from an image"}})
    async def img2img(request: Request, req: Img2ImgRequest = Body(...)):
        """Pictures from a start image (`init_images[0]`), optionally repainting only inside `mask`."""
        pipe = pool.loaded(pool.current) or pool.any_pipeline()
        if not getattr(pipe, "supports_img2img", False):
            return JSONResponse({"detail": "img2img is not available in this version of noisecraft: its Pipeline cannot "
                                           "start from an image yet; use /sdapi/v1/txt2img"}, status_code=501)
        if len(req.init_images) != 1:
            raise FieldError("init_images", f"init_images must hold exactly one picture, not {len(req.init_images)}")
        init = await run_in_threadpool(schemas.decode_image, req.init_images[0], ("init_images", 0))
        mask = None
        if req.mask:
            mask = await run_in_threadpool(schemas.decode_image, req.mask, ("mask",))
            if req.inpainting_mask_invert:
                from PIL import ImageOps

                mask = ImageOps.invert(mask.convert("L"))
        return await run(request, req, init, mask)

    # -- progress and the queue ---------------------------------------------------------------
    @api.get("/sdapi/v1/progress", tags=["A1111"])
    async def progress(skip_current_image: bool = False):
        """The running job: fraction done, seconds left, and (unless skipped) the picture so far."""
        running, waiting = queue.snapshot()
        job = running[0] if running else None
        state = {"skipped": False, "interrupted": bool(job and job.cancelled), "stopping_generation": False,
                 "job": job.id if job else "", "job_count": (job.chunks if job else 0) + waiting,
                 "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": job.chunk if job else 0,
                 "sampling_step": job.step if job else 0, "sampling_steps": job.steps if job else 0}
        fraction = job.fraction if job else 0.0
        image = None
        if job is not None and not skip_current_image:
            image = await run_in_threadpool(_preview, job)
        return {"progress": fraction, "eta_relative": _eta(job), "state": state, "current_image": image,
                "textinfo": None}

    @api.post("/sdapi/v1/interrupt", tags=["A1111"])
    async def interrupt():
        """Stop the running job(s) within one sampling step; the queue moves on."""
        return {"interrupted": queue.interrupt_running("interrupted")}

    @api.get("/queue", tags=["queue"])
    async def queue_state(task_id: str | None = Query(None, max_length=80)):
        """Queue length, and with `task_id` (your `force_task_id`) that job's place, progress and status."""
        running, waiting = queue.snapshot()
        body: dict[str, Any] = {"running": len(running), "waiting": waiting, "capacity": queue.capacity,
                                "workers": len(pool.workers)}
        if task_id is not None:
            job = queue.get(task_id)
            if job is None:
                return JSONResponse({"detail": f"no task {task_id!r} (finished long ago, or never sent)"}, status_code=404)
            position = queue.position(job)
            body["task"] = {"id": job.id, "status": job.status, "position": position, "progress": job.fraction,
                            "step": job.step, "steps": job.steps, "batch": job.chunk, "batches": job.chunks,
                            "eta": _eta(job) if job.status == "running" else round(position * queue._seconds_per_job / len(pool.workers), 1)}
        return body

    @api.post("/queue/{task_id}/cancel", tags=["queue"])
    async def cancel(task_id: str):
        """Drop a waiting job, or stop a running one within one step."""
        job = queue.get(task_id)
        if job is None:
            return JSONResponse({"detail": f"no task {task_id!r}"}, status_code=404)
        queue.cancel(job, "cancelled")
        return {"id": job.id, "status": job.status}

    # -- models, samplers, options ------------------------------------------------------------
    @api.get("/sdapi/v1/sd-models", tags=["A1111"])
    async def sd_models():
        return [{"title": e.title, "model_name": e.name, "hash": e.hash or None, "sha256": None,
                 "filename": e.filename, "config": None} for e in catalog.entries]

    @api.get("/sdapi/v1/samplers", tags=["A1111"])
    async def samplers():
        return [{"name": spec.a1111_name, "aliases": [spec.name], "options": {}} for spec in SAMPLERS.values()]

    @api.get("/sdapi/v1/schedulers", tags=["A1111"])
    async def schedulers():
        return [{"name": name, "label": name.capitalize(), "aliases": None, "default_rho": -1, "need_inner_model": False}
                for name in schemas.SCHEDULERS]

    @api.get("/sdapi/v1/scripts", tags=["A1111"])
    async def scripts():
        return {"txt2img": [], "img2img": []}

    @api.get("/sdapi/v1/options", tags=["A1111"])
    async def get_options():
        current = pool.current
        return {"sd_model_checkpoint": current.title, "sd_checkpoint_hash": current.hash or None,
                "samples_format": "png", "live_previews_enable": True, "show_progress_every_n_steps": 1,
                "CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"}

    @api.post("/sdapi/v1/options", tags=["A1111"])
    async def set_options(request: Request, update: OptionsUpdate = Body(...)):
        """Switch the model (`sd_model_checkpoint`: a title, name or hash from sd-models); other options are ignored."""
        if update.sd_model_checkpoint:
            entry = catalog.find(update.sd_model_checkpoint)
            if entry is None:
                raise FieldError("sd_model_checkpoint", _unknown_model(update.sd_model_checkpoint, catalog))
            if entry != pool.current or pool.loaded(entry) is None:
                failure = await _submit_and_wait(Job(entry, kind="load"), request)
                if failure is not None:
                    return failure
            pool.current = entry
        return None

    @api.post("/sdapi/v1/png-info", tags=["A1111"])
    async def png_info(req: PngInfoRequest):
        """The generation parameters stored in a PNG (A1111's 'PNG Info')."""
        from ..pngmeta import parse_parameters

        image = await run_in_threadpool(schemas.decode_image, req.image, ("image",))
        text = image.info.get("parameters") or ""
        items = {k: v for k, v in image.info.items() if isinstance(v, str)}
        return {"info": text, "items": items, "parameters": parse_parameters(text) if text else {}}

    @api.get("/info", tags=["noisecraft"])
    async def server_info():
        """What the web page needs: the model's sizes and defaults, and the server's limits."""
        pipe = pool.loaded(pool.current) or pool.any_pipeline()
        config = pipe.config
        defaults = config.defaults
        from ..samplers import resolve_sampler

        return {"model": pool.current.title, "models": [e.title for e in catalog.entries],
                "image_size": config.image_size, "size_factor": pipe.size_factor, "max_side": limits.side(pipe),
                "max_images": limits.max_images, "max_steps": limits.max_steps, "queue_capacity": queue.capacity,
                "defaults": {"steps": defaults.get("steps", 20), "cfg_scale": defaults.get("guidance_scale", 5.0),
                             "sampler": resolve_sampler(defaults.get("sampler", "dpmpp_2m_karras")).a1111_name},
                "samplers": [spec.a1111_name for spec in SAMPLERS.values()], "version": __version__,
                "img2img": bool(getattr(pipe, "supports_img2img", False))}

    app.include_router(api)

    # -- the web page -------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # Starlette runs the last-added middleware first: CORS (answers preflights), headers, then the key.
    app.add_middleware(AuthMiddleware, key=ApiKey(settings.api_key), public=PUBLIC_PATHS,
                       public_prefixes=("/static/",), max_body=settings.max_body)
    app.add_middleware(_SecurityHeaders)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], allow_credentials=False)
    return app


def _unprocessable(loc, message: str) -> JSONResponse:
    loc = ["body", *loc] if loc and loc[0] != "body" else list(loc or ["body"])
    return JSONResponse({"detail": [{"type": "value_error", "loc": loc, "msg": message}]}, status_code=422)


def _unknown_model(name: str, catalog) -> str:
    return f"unknown model {name!r}; choose one of: {', '.join(e.title for e in catalog.entries)}"


def _eta(job: Job | None) -> float:
    if job is None or not job.started or job.fraction <= 0:
        return 0.0
    elapsed = time.monotonic() - job.started
    return round(max(0.0, elapsed / job.fraction - elapsed), 2)


def _preview(job: Job) -> str | None:
    """The running job's first image as the sampler currently sees it (its x0 estimate), as base64 PNG."""
    import torch
    from PIL import Image

    x0, pipe = job.preview, job.pipe
    if x0 is None or pipe is None:
        return None
    with torch.inference_mode():
        pixels = pipe.decode(x0)[0]
    array = (pixels * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class _SecurityHeaders:
    """Plain ASGI (keeps `request.is_disconnected` working): no sniffing, no framing, no referrer."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
