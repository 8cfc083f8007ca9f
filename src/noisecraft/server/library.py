"""Every picture the server makes goes into the gallery (`noisecraft.gallery`), with the request that
made it (so it can be drawn again, varied or upscaled) and its lineage (parent, operation, strength)."""

from __future__ import annotations

import dataclasses

from starlette.concurrency import run_in_threadpool

from ..pngmeta import parse_parameters, png_bytes
from ..settings import Request
from .context import Context
from .jobs import Job

REQUEST_FIELDS = {f.name for f in dataclasses.fields(Request)}


def request_of(item) -> Request:
    """The `Request` that draws a gallery item's picture again (one picture, its own seed)."""
    return Request(**{k: v for k, v in (item.settings or {}).items() if k in REQUEST_FIELDS})


async def remember(ctx: Context, job: Job, images: list, *, source: str, operation: str = "generate",
                   parent_id: int | None = None, strength: float | None = None) -> list:
    """Store `images` (the job's, maybe post-processed) in the gallery; their items (None without a gallery)."""
    if ctx.gallery is None:
        return [None] * len(images)
    request = job.request or Request()

    def store():
        items = []
        for image in images:
            fields = parse_parameters(image.info.get("parameters", "")) if image.info.get("parameters") else {}
            seed = int(fields["Seed"]) if str(fields.get("Seed", "")).isdigit() else request.seed
            made = dataclasses.replace(request, seed=seed, num_images=1, batch_size=1, width=image.width,
                                       height=image.height, strength=strength if strength is not None else request.strength)
            items.append(ctx.gallery.add(png_bytes(image), prompt=request.prompt, negative_prompt=request.negative_prompt,
                                         model=job.model.name, seed=seed, width=image.width, height=image.height,
                                         settings=dataclasses.asdict(made), source=source, parent_id=parent_id,
                                         operation=operation, strength=strength))
        return items

    return await run_in_threadpool(store)
