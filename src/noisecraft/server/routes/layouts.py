"""Layouts over HTTP: the templates, and a layout composed from texts, pictures (sent, from the gallery, or
drawn from a prompt through the queue) and a brand kit, answered as the file (PNG signed when asked, or PDF)."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ...campaign import compose_piece, needs_redraw, piece_bytes, request_for, slot_size
from ...errors import UserError
from ...images import load_picture
from ...upscale import SUBTLE
from ..context import Context, context
from ..encoding import decode_image
from ..errors import FieldError
from ..generation import answer, brand_of, draw
from ..jobs import Job, Upscale
from ..signing import identity, signs

router = APIRouter(prefix="/layouts", tags=["layouts"])
MEDIA = {"png": "image/png", "pdf": "application/pdf"}


class LayoutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(description="a built-in layout (GET /layouts)")
    size: str | None = Field(None, description="another canvas the template suits: 1080x1350, A4, Letter, 24x36in")
    brand: str | None = Field(None, description="a brand kit's name (GET /brands): fonts, colours, logo, words")
    texts: dict[str, str] = Field(default_factory=dict, description="text fields by name, e.g. headline, cta")
    images: dict[str, str] = Field(default_factory=dict, description="pictures by slot name: base64 PNG or JPEG")
    items: dict[str, int] = Field(default_factory=dict, description="pictures by slot name: gallery picture ids")
    prompt: str = Field("", description="draws the slots not given a picture")
    seed: int | None = Field(None, description="slot k is drawn with seed + k")
    format: str = Field("png", description="png or pdf")
    sign: bool | None = Field(None, description="Content Credentials and watermark on the PNG (default: the kit's)")


@router.get("")
async def listing():
    """The built-in layouts: their sizes, text fields and picture slots."""
    from ...layouts import load_template, templates

    return [{"name": t.name, "description": t.description, "sizes": list(t.sizes or [t.size_name]),
             "texts": t.text_fields(), "images": t.image_fields()} for t in map(load_template, templates())]


@router.post("/render")
async def render(request: Request, body: LayoutBody = Body(...), ctx: Context = Depends(context)):
    """The layout as a file: texts set in the kit's fonts and colours, never drawn by the model."""
    from ...layouts import Style, compose, load_template

    if body.format not in MEDIA:
        raise FieldError("format", f"format is png or pdf, not {body.format!r}")
    kit = brand_of(ctx, body.brand)
    try:
        template = load_template(body.template, body.size)
    except UserError as error:
        raise FieldError("size" if body.size and "size" in str(error) else "template", str(error)) from None
    for name, text in body.texts.items():
        try:
            kit is not None and kit.check_words(text, f"the {name} text")
        except UserError as error:
            raise FieldError(("texts", name), str(error)) from None
    images = {slot: await run_in_threadpool(decode_image, text, ("images", slot)) for slot, text in body.images.items()}
    for slot, item_id in body.items.items():
        images[slot] = await _gallery_picture(ctx, item_id, slot)
    style = kit.style() if kit is not None else Style.default()
    try:
        empty = (await run_in_threadpool(compose, template, style, body.texts, images)).empty_slots
    except UserError as error:
        raise FieldError(("texts",), str(error)) from None
    parameters = None
    for k, slot in enumerate(empty if body.prompt.strip() else ()):
        picture, refusal = await _drawn(ctx, request, kit, body, k, slot_size(template, slot))
        if refusal is not None:
            return refusal  # the queue is full, the server is stopping, the drawing failed
        images[slot] = picture
        parameters = parameters or picture.info.get("parameters")
    try:
        piece = await run_in_threadpool(compose_piece, template, style, body.texts, images, parameters)
    except UserError as error:
        raise FieldError((error.field or "texts",), str(error)) from None
    sign = (body.sign if body.sign is not None else signs(ctx, kit)) and body.format == "png"
    data = await run_in_threadpool(piece_bytes, piece, body.format, sign, identity(ctx, kit) if sign else None,
                                   f"{template.name}.{body.format}")
    return Response(data, media_type=MEDIA[body.format],
                    headers={"Content-Disposition": f'inline; filename="{template.name}.{body.format}"'})


async def _gallery_picture(ctx: Context, item_id: int, slot: str):
    item = await run_in_threadpool(ctx.gallery.get, item_id) if ctx.gallery is not None else None
    if item is None:
        raise FieldError(("items", slot), f"there is no picture {item_id} in the gallery")
    return await run_in_threadpool(load_picture, ctx.gallery.path(item), f"gallery picture {item.id}")


async def _drawn(ctx: Context, request: Request, kit, body: LayoutBody, k: int, size: tuple[int, int]):
    """(the picture for one empty slot drawn through the queue at the slot's aspect, None) or (None, the refusal)."""
    pool = ctx.pool
    pipe = pool.traits()
    try:
        wanted = request_for(kit, ctx.settings.presets, body.prompt, "", "", None if body.seed is None else body.seed + k,
                             size, (pipe.config.image_size, pipe.size_factor))
    except UserError as error:
        raise FieldError("prompt", str(error)) from None
    drawn = (wanted.width or pipe.config.image_size, wanted.height or pipe.config.image_size)
    job = Job(pool.current, request=wanted, limits=ctx.settings.limits, touch_up=kit.finish if kit else None,
              upscale=Upscale(2, SUBTLE) if needs_redraw(drawn, size) else None)
    try:
        try:
            failure = await draw(ctx, job, request)
        except UserError as error:
            raise FieldError(error.field or "prompt", str(error)) from None
        return (None, answer(failure)) if failure is not None else (job.images[0], None)
    finally:
        job.on_done(job.release)
