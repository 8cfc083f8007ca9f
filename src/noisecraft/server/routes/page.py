"""The web page (plain HTML, CSS and JavaScript in static/, no build step) and the /info it reads."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from ...brand import to_hex
from ...samplers import SAMPLERS, resolve_sampler
from ...version import __version__
from ..context import Context, context

STATIC = Path(__file__).parent.parent / "static"
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

page = APIRouter(include_in_schema=False)
api = APIRouter(tags=["noisecraft"])


@page.get("/")
async def index():
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})


@api.get("/presets")
async def presets(ctx: Context = Depends(context)):
    """The presets the page shows as chips (`prompt` is a template: {prompt} is the user's text)."""
    return [p.to_json() for p in ctx.settings.presets]


@api.get("/brands")
async def brands(ctx: Context = Depends(context)):
    """The brand kits this server offers (`serve --brand DIR`): `brand` in txt2img, OpenAI's generations and the studio."""
    return [{"name": kit.name, "palette": {role: to_hex(c) for role, c in kit.palette.items()}, "colours": kit.colour_words(),
             "style_words": kit.style_words, "preset": kit.preset, "banned": list(kit.banned),
             "colour_strength": kit.colour_strength, "logo": kit.logo is not None} for kit in ctx.settings.brands.values()]


@api.get("/info")
async def server_info(ctx: Context = Depends(context)):
    """What the web page needs: the model's sizes and defaults, and the server's limits."""
    pool, limits = ctx.pool, ctx.settings.limits
    pipe = pool.traits()
    defaults = pipe.defaults
    return {"model": pool.current.title, "models": [e.title for e in pool.catalog.entries],
            "image_size": pipe.config.image_size, "size_factor": pipe.size_factor, "max_side": limits.side(pipe.config.image_size),
            "max_images": limits.max_images, "max_steps": limits.max_steps, "queue_capacity": pool.queue.capacity,
            "defaults": {"steps": defaults["steps"], "cfg_scale": defaults["guidance_scale"],
                         "sampler": resolve_sampler(defaults["sampler"]).a1111_name},
            "samplers": [spec.a1111_name for spec in SAMPLERS.values()], "version": __version__,
            "img2img": pipe.vae is not None}
