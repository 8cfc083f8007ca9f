"""Fine-tuning over HTTP: send photos, watch the samples, get the LoRA file.

    POST /finetune                   multipart: photos (files, repeated), name, class_word, steps, rank, lr,
                                     seed, text_encoder, conv, prior, model -> 202 {id, status, ...}
    GET  /finetune                   every training this server has run or queued
    GET  /finetune/{id}              status, step, loss, held-out loss per checkpoint, links
    GET  /finetune/{id}/samples.png  the sample pictures so far (a row per checkpoint)
    GET  /finetune/{id}/before-after.png, /finetune/{id}/lora.safetensors   once done
    POST /finetune/{id}/cancel

Trainings queue apart from pictures and give way to them (`server.training`).
"""

from __future__ import annotations

import io

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ...errors import UserError
from ...files import write_bytes
from ...images import load_picture
from ...train.finetune import FinetuneSettings
from ...train.photos import MAX_PHOTOS
from ..context import Context, context
from ..encoding import MAX_UPLOAD_PIXELS
from ..errors import FieldError, JSONResponse
from ..generation import answer
from ..jobs import QueueFull, ShuttingDown
from ..training import Training

router = APIRouter(prefix="/finetune", tags=["finetune"])
MAX_SERVER_PHOTOS = min(MAX_PHOTOS, 100)
MAX_SERVER_STEPS = 5000
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


def _text(form, name: str, default: str = "", longest: int = 200) -> str:
    value = form.get(name, default)
    if not isinstance(value, str):
        raise FieldError(name, f"{name} must be text")
    if len(value) > longest or any(ord(c) < 32 for c in value):
        raise FieldError(name, f"{name} must be one line of at most {longest} characters")
    return value.strip()


def _number(form, name: str, kind, default, low, high):
    text = _text(form, name, "")
    if text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise FieldError(name, f"{name} must be a number, not {text[:20]!r}") from None
    if not low <= value <= high:
        raise FieldError(name, f"{name} must be from {low} to {high}, not {value}")
    return value


def _flag(form, name: str) -> bool:
    return _text(form, name, "").lower() in ("1", "true", "on", "yes")


def _photo_suffix(raw: bytes, index: int) -> str:
    """The file suffix of an uploaded photo (PNG, JPEG, WebP, HEIC), checked before it is kept."""
    if raw[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftyphevc"):
        import pillow_heif
        from PIL import Image

        pillow_heif.register_heif_opener()
        try:
            with Image.open(io.BytesIO(raw)) as image:
                if image.width * image.height > MAX_UPLOAD_PIXELS:
                    raise UserError(f"photo {index + 1} is {image.width}x{image.height} pixels; at most {MAX_UPLOAD_PIXELS:,}")
        except (OSError, ValueError):
            raise UserError(f"photo {index + 1} is a damaged HEIC picture") from None
        return ".heic"
    picture = load_picture(io.BytesIO(raw), f"photo {index + 1}", MAX_UPLOAD_PIXELS)
    return SUFFIX[picture.format]


def _slug(name: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())[:60] or "lora"


def _describe(ctx: Context, t: Training) -> dict:
    base = f"/finetune/{t.id}"
    body = {"id": t.id, "status": t.status, "name": t.name, "class_word": t.class_word, "photos": t.photos,
            "model": t.model.title, "step": t.step, "steps": t.total or t.settings.total_steps(t.photos), "loss": t.loss,
            "held_out": [{"step": s, "loss": round(v, 6)} for s, v in t.checkpoints()], "best_step": t.best_step,
            "position": ctx.trainings.position(t), "yielding_to_pictures": t.yielding, "error": t.error,
            "samples": t.samples_seen()}
    if body["samples"]:
        body["samples_url"] = f"{base}/samples.png?v={body['samples']}"
    if t.status == "done":
        body |= {"before_after_url": f"{base}/before-after.png", "lora_url": f"{base}/lora.safetensors"}
    return body


@router.post("", status_code=202)
async def start(request: Request, ctx: Context = Depends(context)):
    """Queue a fine-tuning of the model on the photos sent; answers at once with the training's id."""
    form = await request.form()
    uploads = [*form.getlist("photos"), *form.getlist("photos[]")]
    if not uploads or not all(hasattr(u, "read") for u in uploads):
        raise FieldError("photos", "send the photos as files named photos (PNG, JPEG, WebP or HEIC; 5-30 is typical)")
    if len(uploads) > MAX_SERVER_PHOTOS:
        raise FieldError("photos", f"send at most {MAX_SERVER_PHOTOS} photos, not {len(uploads)}")
    name = _text(form, "name")
    if not name:
        raise FieldError("name", "name is what the photos show, as you will prompt it: 'acme storefront'")
    class_word = _text(form, "class_word")
    model = ctx.pool.current
    if _text(form, "model"):
        model = ctx.pool.catalog.find(_text(form, "model"))
        if model is None:
            raise FieldError("model", "there is no such model on this server (GET /sdapi/v1/sd-models)")
    prior = _number(form, "prior", int, 0, 0, 200)
    if prior and not class_word:
        raise FieldError("class_word", "prior preservation needs class_word (the kind of thing it is: storefront, mug)")
    rank = _number(form, "rank", int, 16, 1, 128)
    settings = FinetuneSettings(steps=_number(form, "steps", int, None, 1, MAX_SERVER_STEPS), rank=rank, alpha=float(rank),
                                lr=_number(form, "lr", float, 1e-4, 1e-7, 1e-1),
                                seed=_number(form, "seed", int, 0, 0, 2**31 - 1), text_encoder=_flag(form, "text_encoder"),
                                conv=_flag(form, "conv"), prior_images=prior, name=_slug(name),
                                checkpoint_every=_number(form, "every", int, 100, 1, MAX_SERVER_STEPS))
    photos = []
    for index, upload in enumerate(uploads):
        raw = await upload.read()
        try:
            photos.append((raw, await run_in_threadpool(_photo_suffix, raw, index)))
        except UserError as error:
            raise FieldError(("photos", index), str(error)) from None
    folder = ctx.trainings.new_folder()
    (folder / "photos").mkdir()
    for index, (raw, suffix) in enumerate(photos):
        await run_in_threadpool(write_bytes, folder / "photos" / f"{index:03d}{suffix}", raw)
    training = Training(model, name, class_word, settings, folder, len(photos))
    try:
        ctx.trainings.submit(training)
    except (QueueFull, ShuttingDown) as refused:
        return answer(refused)
    return JSONResponse(_describe(ctx, training), status_code=202)


@router.get("")
async def listing(ctx: Context = Depends(context)):
    return [_describe(ctx, t) for t in ctx.trainings.listing()]


def _training(ctx: Context, training_id: str) -> Training:
    training = ctx.trainings.get(training_id)
    if training is None:
        raise HTTPException(404, "there is no such training on this server (GET /finetune lists them)")
    return training


@router.get("/{training_id}")
async def status(training_id: str, ctx: Context = Depends(context)):
    return _describe(ctx, _training(ctx, training_id))


@router.post("/{training_id}/cancel")
async def cancel(training_id: str, ctx: Context = Depends(context)):
    training = _training(ctx, training_id)
    ctx.trainings.cancel(training)
    return _describe(ctx, training)


def _file(path, media: str, filename: str):
    if not path.is_file():
        return JSONResponse({"detail": "not made yet: see the training's status"}, status_code=404)
    return FileResponse(path, media_type=media, filename=filename, headers={"Cache-Control": "no-store"})


@router.get("/{training_id}/samples.png")
async def samples(training_id: str, ctx: Context = Depends(context)):
    return _file(_training(ctx, training_id).run_folder / "samples.png", "image/png", "samples.png")


@router.get("/{training_id}/before-after.png")
async def before_after(training_id: str, ctx: Context = Depends(context)):
    return _file(_training(ctx, training_id).run_folder / "before-after.png", "image/png", "before-after.png")


@router.get("/{training_id}/lora.safetensors")
async def lora(training_id: str, ctx: Context = Depends(context)):
    t = _training(ctx, training_id)
    return _file(t.lora_file, "application/octet-stream", f"{t.settings.name}.safetensors")
