"""noisecraft's queue API: where a job stands, and cancelling it by the id the client gave it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from ..context import Context, context
from ..errors import JSONResponse
from .a1111 import eta

router = APIRouter(tags=["queue"])


@router.get("/queue")
async def queue_state(task_id: str | None = Query(None, max_length=80), ctx: Context = Depends(context)):
    """Queue length, and with `task_id` (your `force_task_id`) that job's place, progress and status."""
    pool, queue = ctx.pool, ctx.pool.queue
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
                        "eta": eta(job) if job.status == "running" else round(position * queue.seconds_per_job / len(pool.workers), 1)}
    return body


@router.post("/queue/{task_id}/cancel")
async def cancel(task_id: str, ctx: Context = Depends(context)):
    """Drop a waiting job, or stop a running one within one step."""
    queue = ctx.pool.queue
    job = queue.get(task_id)
    if job is None:
        return JSONResponse({"detail": f"no task {task_id!r}"}, status_code=404)
    queue.cancel(job, "cancelled")
    return {"id": job.id, "status": job.status}
