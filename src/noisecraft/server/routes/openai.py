"""OpenAI's Images API (``/v1``): generations, edits, variations and models, in OpenAI's request and
response shapes, so the `openai` client and the tools built on it work unchanged.

A picture is drawn at the model's native pixel count with the aspect ratio asked for, then brought
to the exact size: one 2x pass of the upscale path (tiled img2img) when it must grow, Lanczos for
the rest; each answer's `noisecraft` field says what was done. Refusals are OpenAI's errors
(``{"error": {"message", "type", "param", "code"}}``) with its statuses, so clients raise their
usual exceptions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import time

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import FileResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ...errors import UserError
from ...images import load_picture
from ...pngmeta import amend_parameters, parse_parameters
from ...presets import find
from ...settings import Request as DrawRequest
from ...studio import keep_outside, size_for
from ...upscale import SUBTLE
from ..context import Context, context
from ..encoding import MAX_UPLOAD_PIXELS
from ..errors import openai_error
from ..errors import FieldError
from ..generation import brand_of, draw
from ..jobs import Failure, Job, QueueFull, ShuttingDown, Upscale
from ..library import remember
from ..signing import identity, picture_file as signed_file, signs

router = APIRouter(prefix="/v1", tags=["OpenAI"])
SIZES = ("auto", "256x256", "512x512", "1024x1024", "1024x1536", "1536x1024", "1792x1024", "1024x1792")
QUALITY = {"low": 0.5, "medium": 1.0, "auto": 1.0, "standard": 1.0, "high": 1.5, "hd": 1.5}  # x the model's steps
STYLES = ("vivid", "natural")  # presets of those ids (presets.toml)
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")  # drawn by the current model
EDIT_STRENGTH, VARIATION_STRENGTH = 0.75, 0.6  # without a mask an edit redraws the whole picture
URL_LIFETIME = 3600  # seconds a response's picture URL works, as OpenAI's do


class Refused(Exception):
    """An OpenAI-shaped refusal: HTTP `status`, one sentence, the parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


class GenerationsBody(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str = Field(description="what to draw")
    model: str | None = Field(None, description="a noisecraft model name (GET /v1/models); OpenAI's names draw with the current one")
    n: int = Field(1, description="1-10 pictures")
    size: str | None = Field("auto", description="auto, 256x256, 512x512, 1024x1024, 1024x1536, 1536x1024, 1792x1024, 1024x1792")
    quality: str | None = Field("auto", description="low, medium, high, auto (standard, hd): fewer or more steps")
    style: str | None = Field(None, description="vivid or natural: words added to the prompt")
    response_format: str | None = Field("b64_json", description="b64_json or url (a signed link for an hour)")
    output_format: str | None = Field("png", description="png (with its parameters), jpeg or webp")
    output_compression: int | None = Field(None, description="0-100 for jpeg and webp")
    background: str | None = Field("auto", description="auto or opaque (transparent is not supported)")
    brand: str | None = Field(None, description="noisecraft: a brand kit's name (GET /brands): its words and colour step")


@router.get("/models")
async def models(ctx: Context = Depends(context)):
    """The models this server draws with, as OpenAI lists models."""
    return {"object": "list", "data": [_model(e.name) for e in ctx.pool.catalog.entries]}


@router.get("/models/{name}")
async def model(name: str, ctx: Context = Depends(context)):
    return _model(_entry(ctx, name).name)


@router.post("/images/generations")
async def generations(request: Request, body: GenerationsBody = Body(...), ctx: Context = Depends(context)):
    """Pictures from a prompt (OpenAI's `images.generate`)."""
    entry, pipe = _entry(ctx, body.model), None
    n = _count(body.n)
    prompt = _prompt(body.prompt, body.style, ctx.settings.presets)
    kit, prompt, negative = _brand(ctx, body.brand, prompt)
    _check_output(body.response_format, body.output_format, body.output_compression, body.background)
    target, drawn = _sizes(ctx, entry, body.size, None)
    pipe = ctx.pool.traits(entry)
    steps = max(1, round(pipe.defaults["steps"] * _quality(body.quality)))
    job = Job(entry, request=DrawRequest(prompt, negative, steps=steps, width=drawn[0], height=drawn[1], num_images=n,
                                         batch_size=n),
              limits=ctx.settings.limits, upscale=_growth(drawn, target), touch_up=kit.finish if kit else None,
              signer=identity(ctx, kit) if signs(ctx, kit) else None)
    return await _answer(ctx, request, job, target, body.response_format, body.output_format, body.output_compression,
                         operation="generate")


@router.post("/images/edits")
async def edits(request: Request, ctx: Context = Depends(context)):
    """A picture repainted where its mask is transparent, or, without a mask, redrawn to the prompt (`images.edit`)."""
    form = await request.form()
    pictures = [*form.getlist("image"), *form.getlist("image[]")]
    if len(pictures) != 1:
        raise Refused(400, f"send one picture as image (noisecraft edits one at a time), not {len(pictures)}", "image")
    image = await _picture(pictures[0], "image")
    prompt = _prompt(_text(form, "prompt", required=True), None, ())
    mask = None
    if form.get("mask") is not None:
        mask = await _picture(form.get("mask"), "mask")
        if mask.size != image.size:
            raise Refused(400, f"the mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
                               "they must be the same size", "mask")
        if "A" not in mask.getbands():
            raise Refused(400, "the mask must be a PNG with an alpha channel: its transparent pixels are repainted", "mask")
        mask = mask.getchannel("A").point(lambda a: 255 if a < 128 else 0)
    return await _from_picture(ctx, request, form, image, prompt, mask, "edit")


@router.post("/images/variations")
async def variations(request: Request, ctx: Context = Depends(context)):
    """New pictures like the one sent (`images.create_variation`): img2img with new seeds."""
    form = await request.form()
    if form.get("image") is None:
        raise Refused(400, "send the picture to vary as image", "image")
    image = await _picture(form.get("image"), "image")
    text = image.info.get("parameters")
    prompt = text.split("\n", 1)[0] if text and parse_parameters(text) else ""  # a noisecraft picture knows its prompt
    return await _from_picture(ctx, request, form, image, prompt, None, "variation")


@router.get("/images/files/{item_id}", include_in_schema=False)
async def picture_file(item_id: int, expires: int, signature: str, ctx: Context = Depends(context)):
    """A picture a `url` answer points to (no key needed: the link is signed and expires, like OpenAI's)."""
    if ctx.gallery is None or expires < time.time() or not hmac.compare_digest(signature, _sign(ctx, item_id, expires)):
        raise Refused(404, "this picture link is unknown or has expired", code="not_found")
    item = await run_in_threadpool(ctx.gallery.get, item_id)
    if item is None:
        raise Refused(404, "this picture is no longer in the gallery", code="not_found")
    return FileResponse(ctx.gallery.path(item), media_type="image/png")


# -- the parts ----------------------------------------------------------------------------------

async def _from_picture(ctx: Context, request: Request, form, image: Image.Image, prompt: str, mask, operation: str):
    """An edit or a variation: the picture brought to the model's size (same aspect), img2img or inpainting, back to size."""
    entry = _entry(ctx, _text(form, "model"))
    n = _count(_number(form, "n", 1))
    fmt, compression = _text(form, "output_format") or "png", _number(form, "output_compression", None)
    response_format = _text(form, "response_format") or "b64_json"
    _check_output(response_format, fmt, compression, _text(form, "background") or "auto")
    size = _text(form, "size") or "auto"
    target, drawn = _sizes(ctx, entry, size, image.size)
    start = image.convert("RGB").resize(drawn, Image.LANCZOS)
    small_mask = mask.resize(drawn, Image.NEAREST) if mask is not None else None
    strength = 1.0 if mask is not None else EDIT_STRENGTH if operation == "edit" else VARIATION_STRENGTH
    job = Job(entry, request=DrawRequest(prompt, width=drawn[0], height=drawn[1], num_images=n, batch_size=n, strength=strength),
              init_image=start, mask_image=small_mask, limits=ctx.settings.limits, upscale=_growth(drawn, target),
              signer=identity(ctx) if signs(ctx) else None)
    keep = (image.convert("RGB").resize(target, Image.LANCZOS), mask.resize(target, Image.NEAREST)) if mask is not None else None
    return await _answer(ctx, request, job, target, response_format, fmt, compression, operation=operation,
                         strength=strength, keep=keep)


async def _answer(ctx: Context, request: Request, job: Job, target, response_format, fmt, compression, *,
                  operation: str, strength: float | None = None, keep=None):
    try:
        failure = await draw(ctx, job, request)
    except UserError as error:
        raise Refused(400, str(error), error.field) from None
    try:
        if failure is not None:
            raise _refusal(failure)
        s = job.settings

        def finish():
            done = []
            for picture in job.images:
                how = [f"drawn at {s.width}x{s.height}"] + ([picture.info["upscaled"]] if "upscaled" in picture.info else [])
                if picture.size != target:
                    how.append(f"Lanczos to {target[0]}x{target[1]}")
                    info, picture = picture.info, picture.resize(target, Image.LANCZOS)
                    picture.info = info
                    if info.get("parameters"):
                        info["parameters"] = amend_parameters(info["parameters"], Size=f"{target[0]}x{target[1]}")
                if keep is not None:  # an edit keeps the sent picture's own pixels outside the mask
                    picture = keep_outside(keep[0], picture, keep[1])
                done.append((picture, "; ".join(how)))
            return done

        done = await run_in_threadpool(finish)
        items = await remember(ctx, job, [p for p, _ in done], source="openai", operation=operation, strength=strength)
        data = []
        for (picture, how), item in zip(done, items):
            entry = {"revised_prompt": s.prompt, "noisecraft": {"seed": _seed(picture), "how": how,
                                                                "gallery_id": item.id if item else None}}
            if response_format == "url":
                entry["url"] = _url(ctx, request, item)
            else:
                raw = await run_in_threadpool(signed_file, ctx, job, picture, fmt, compression)
                entry["b64_json"] = base64.b64encode(raw).decode("ascii")
            data.append(entry)
        words = len(s.prompt.split())
        return {"created": int(time.time()), "data": data, "background": "opaque", "output_format": fmt,
                "size": f"{target[0]}x{target[1]}", "quality": "auto",
                "usage": {"input_tokens": words, "output_tokens": len(data), "total_tokens": words + len(data),
                          "input_tokens_details": {"text_tokens": words, "image_tokens": 0}}}
    finally:
        job.on_done(job.release)


def _refusal(failure) -> Refused:
    if isinstance(failure, QueueFull):
        refused = Refused(429, str(failure), code="rate_limit_exceeded")
        refused.retry_after = failure.retry_after
        return refused
    if isinstance(failure, ShuttingDown):
        return Refused(503, str(failure), code="server_shutting_down")
    if isinstance(failure, Failure):
        return Refused(400 if failure.status == 422 else failure.status, failure.message, failure.field)
    return Refused(getattr(failure, "status_code", 500), "the request was not answered (the client left)")


def _entry(ctx: Context, name: str | None):
    if not name or name in OPENAI_MODELS:
        return ctx.pool.current
    entry = ctx.pool.catalog.find(name)
    if entry is None:
        names = ", ".join(e.name for e in ctx.pool.catalog.entries)
        raise Refused(404, f"the model {name!r} does not exist here; choose one of: {names}", "model", "model_not_found")
    return entry


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "noisecraft"}


def _sizes(ctx: Context, entry, size: str, like: tuple[int, int] | None):
    """(the size asked for, the size the model draws: its native pixel count at that aspect ratio)."""
    if size not in SIZES:
        raise Refused(400, f"size must be one of {', '.join(SIZES)}, not {size!r}", "size")
    pipe = ctx.pool.traits(entry)
    native, factor = pipe.config.image_size, pipe.size_factor
    if size == "auto":
        target = like or (native, native)
    else:
        target = tuple(map(int, size.split("x")))
    return target, size_for(f"{target[0]}:{target[1]}", native, factor)


def _growth(drawn, target) -> Upscale | None:
    """One 2x redraw pass when the picture must grow to at least twice its size (Lanczos does the rest)."""
    return Upscale(2, SUBTLE) if min(target[0] / drawn[0], target[1] / drawn[1]) >= 2 else None


def _prompt(prompt: str | None, style: str | None, presets) -> str:
    if not prompt or not prompt.strip():
        raise Refused(400, "prompt must say what to draw", "prompt")
    if style not in (None, *STYLES):
        raise Refused(400, f"style must be vivid or natural, not {style!r}", "style")
    return find(presets, style).apply(prompt)[0] if style else prompt.strip()


def _brand(ctx: Context, name: str | None, prompt: str):
    """(the brand kit named `name` or None, the prompt and negative prompt on brand); a 400 naming `brand` for an
    unknown kit, naming `prompt` for a word the kit bans."""
    try:
        kit = brand_of(ctx, name)
    except FieldError as error:
        raise Refused(400, str(error), "brand") from None
    try:
        return (kit, *kit.apply(prompt)) if kit else (None, prompt, "")
    except UserError as error:
        raise Refused(400, str(error), "prompt") from None


def _quality(quality: str | None) -> float:
    if (quality or "auto") not in QUALITY:
        raise Refused(400, f"quality must be one of {', '.join(QUALITY)}, not {quality!r}", "quality")
    return QUALITY[quality or "auto"]


def _count(n) -> int:
    if not isinstance(n, int) or not 1 <= n <= 10:
        raise Refused(400, f"n must be from 1 to 10, not {n}", "n")
    return n


def _check_output(response_format, fmt, compression, background) -> None:
    if response_format not in ("b64_json", "url"):
        raise Refused(400, f"response_format must be b64_json or url, not {response_format!r}", "response_format")
    if fmt not in ("png", "jpeg", "webp"):
        raise Refused(400, f"output_format must be png, jpeg or webp, not {fmt!r}", "output_format")
    if compression is not None and not (isinstance(compression, int) and 0 <= compression <= 100):
        raise Refused(400, f"output_compression must be from 0 to 100, not {compression}", "output_compression")
    if background == "transparent":
        raise Refused(400, "transparent backgrounds are not supported; use background opaque or auto", "background")
    if background not in ("auto", "opaque"):
        raise Refused(400, f"background must be auto or opaque, not {background!r}", "background")


async def _picture(upload, name: str) -> Image.Image:
    if not hasattr(upload, "read"):
        raise Refused(400, f"{name} must be a file (PNG, JPEG or WebP)", name)
    raw = await upload.read()
    try:
        image = await run_in_threadpool(load_picture, io.BytesIO(raw), name, MAX_UPLOAD_PIXELS)
    except UserError as error:
        raise Refused(400, str(error), name) from None
    return image


def _text(form, name: str, required: bool = False) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise Refused(400, f"{name} must be text", name)
    if required and not value:
        raise Refused(400, f"{name} is required", name)
    return value


def _number(form, name: str, default):
    value = _text(form, name)
    if value is None or value == "":
        return default
    if not value.strip().lstrip("-").isdigit():
        raise Refused(400, f"{name} must be a whole number, not {value[:20]!r}", name)
    return int(value)


def _seed(picture: Image.Image) -> int | None:
    seed = parse_parameters(picture.info.get("parameters", "") or "").get("Seed")
    return int(seed) if str(seed or "").isdigit() else None


def _sign(ctx: Context, item_id: int, expires: int) -> str:
    return hmac.new(ctx.url_secret, f"{item_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def _url(ctx: Context, request: Request, item) -> str:
    if item is None:
        raise Refused(400, "response_format url needs the server's gallery (it was started with --no-gallery); "
                           "ask for b64_json", "response_format")
    expires = int(time.time()) + URL_LIFETIME
    return f"{str(request.base_url).rstrip('/')}/v1/images/files/{item.id}?expires={expires}&signature={_sign(ctx, item.id, expires)}"


def install(app) -> None:
    """OpenAI's error shape for `Refused` (and for FastAPI's own validation errors under /v1, in errors.py)."""
    from ..errors import JSONResponse

    @app.exception_handler(Refused)
    async def refused(request, error: Refused):
        headers = {"Retry-After": str(error.retry_after)} if hasattr(error, "retry_after") else None
        return JSONResponse(openai_error(error.status, str(error), error.param, error.code), status_code=error.status,
                            headers=headers)

