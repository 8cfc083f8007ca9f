"""The gallery over HTTP: every picture the server made, newest first, searchable, with its lineage."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ..context import Context, context
from ..errors import JSONResponse

router = APIRouter(tags=["gallery"])
NO_GALLERY = "this server keeps no gallery, so the studio has no pictures to work on"


def shown(item) -> dict:
    """An item as the API shows it: its row, and where its picture is."""
    return {**item.to_json(), "image_url": f"/gallery/{item.id}/image"}


def missing(item_id: int) -> JSONResponse:
    return JSONResponse({"detail": f"there is no picture {item_id} in the gallery"}, status_code=404)


@router.get("/gallery")
async def search(query: str | None = Query(None, max_length=500, description="words in the prompt (all must match)"),
                 model: str | None = Query(None, max_length=200), favourite: bool | None = None,
                 since: float | None = Query(None, description="unix time"), until: float | None = None,
                 before: int | None = Query(None, description="the `next` of the previous page"),
                 limit: int = Query(50, ge=1, le=200), ctx: Context = Depends(context)):
    """Pictures newest first, a page at a time: `items`, and `next` (pass it as `before`; null at the end)."""
    if ctx.gallery is None:
        return JSONResponse({"detail": NO_GALLERY}, status_code=404)
    entry = ctx.pool.catalog.find(model) if model else None  # a title ("name [hash]") or a name
    items, cursor = await run_in_threadpool(ctx.gallery.search, query, model=entry.name if entry else model, favourite=favourite, since=since,
                                            until=until, before=before, limit=limit)
    return {"items": [shown(item) for item in items], "next": cursor}


@router.get("/gallery/{item_id}")
async def one(item_id: int, ctx: Context = Depends(context)):
    """One picture's row and its lineage (itself, its parent, the parent's parent, ...)."""
    if ctx.gallery is None:
        return JSONResponse({"detail": NO_GALLERY}, status_code=404)
    lineage = await run_in_threadpool(ctx.gallery.lineage, item_id)
    if not lineage:
        return missing(item_id)
    return {**shown(lineage[0]), "lineage": [{"id": i.id, "operation": i.operation, "strength": i.strength,
                                              "prompt": i.prompt} for i in lineage]}


@router.get("/gallery/{item_id}/image")
async def image(item_id: int, ctx: Context = Depends(context)):
    """The PNG file, with its parameters."""
    item = await run_in_threadpool(ctx.gallery.get, item_id) if ctx.gallery is not None else None
    if item is None:
        return missing(item_id)
    return FileResponse(ctx.gallery.path(item), media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@router.post("/gallery/{item_id}/favourite")
async def favourite(item_id: int, value: bool = Body(True, embed=True, alias="favourite"), ctx: Context = Depends(context)):
    item = await run_in_threadpool(ctx.gallery.set_favourite, item_id, value) if ctx.gallery is not None else None
    return shown(item) if item is not None else missing(item_id)


@router.delete("/gallery/{item_id}")
async def delete(item_id: int, ctx: Context = Depends(context)):
    """Remove the picture: its row and (unless another row shares it) its file."""
    deleted = await run_in_threadpool(ctx.gallery.delete, item_id) if ctx.gallery is not None else False
    return {"deleted": item_id} if deleted else missing(item_id)
