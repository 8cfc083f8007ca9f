"""Every picture the server makes goes into the gallery (`noisecraft.gallery`), with the request that
made it (so it can be drawn again, varied or upscaled) and its lineage (parent, operation, strength)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from ..gallery.pictures import add_picture
from ..settings import Request
from .context import Context
from .jobs import Job
from .signing import picture_file


async def remember(ctx: Context, job: Job, images: list, *, source: str, operation: str = "generate",
                   parent_id: int | None = None, strength: float | None = None) -> list:
    """Store `images` (the job's, maybe post-processed) in the gallery; their items (None without a gallery)."""
    if ctx.gallery is None:
        return [None] * len(images)
    request = job.request or Request()
    return await run_in_threadpool(lambda: [add_picture(ctx.gallery, image, request, model=job.model.name, source=source,
                                                        operation=operation, parent_id=parent_id, strength=strength,
                                                        data=picture_file(ctx, job, image))
                                            for image in images])
