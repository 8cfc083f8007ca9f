"""Jobs and the one bounded FIFO queue they wait in (the workers that run them: `worker.py`).

A request becomes a `Job` holding its `Request` and, once resolved against the model, its
`Settings`. A job ends as done, interrupted, cancelled or failed (with an HTTP status and one
sentence); whoever waits for it is called back from the worker's thread.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserError
from ..settings import Limits, Request, Settings
from .catalog import ModelEntry
from .errors import FieldError

RECENT_JOBS = 256  # finished jobs kept for /queue look-ups


class Interrupted(Exception):
    """Raised from the sampling callback to stop a cancelled job (not a RuntimeError: Pipeline re-raises it)."""


SHUTTING_DOWN = "the server is shutting down; send the request again when it is back"


class ShuttingDown(Exception):
    def __init__(self):
        super().__init__(SHUTTING_DOWN)


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Failure:
    status: int  # 422 (the request), 500 (a fault), 507 (out of memory), 499 (client gone), 503 (shutting down)
    message: str
    loc: tuple = ()  # the request field at fault, as a 422 `loc`
    field: str | None = None  # or the `Request` field at fault (a `UserError` from `resolve`)


@dataclass(frozen=True)
class Upscale:
    """A second pass over each picture (A1111's hires fix, the studio's U): `scale` times larger by
    `upscaler`, then redrawn tile by tile at `strength` with `steps` (None: the first pass's); `noisecraft.upscale`."""

    scale: float
    strength: float
    upscaler: object = "Lanczos"  # a resampler's name or a loaded upscaler file
    steps: int | None = None


@dataclass(eq=False)
class Job:
    """One request's work. `kind` "generate" draws `settings` (resolved from `request` by the worker
    when the model was not loaded to resolve against), then applies `upscale` to each picture if set;
    "upscale" applies `upscale` to `init_image` with `request`'s prompt; "load" only makes `model` current."""

    model: ModelEntry
    kind: str = "generate"
    request: Request | None = None
    settings: Settings | None = None
    init_image: Any = None
    mask_image: Any = None
    limits: Limits | None = None
    upscale: Upscale | None = None
    touch_up: Callable | None = None  # applied to each picture once drawn (and upscaled): a brand kit's colour step
    signer: Any = None  # a provenance Identity: the pictures are handed out and kept signed (server/signing.py)
    files: dict = field(default_factory=dict)  # (picture id, format, quality) -> its signed file
    source: bytes | None = None  # the PNG file an edit started from: a signed picture's parent ingredient
    controls: list | None = None  # `server.controlnets.Unit`s: ControlNets and their pictures
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "queued"  # queued, running, done, interrupted, failed, cancelled
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    fraction: float = 0.0  # of the whole job, for progress bars
    step: int = 0
    steps: int = 0
    chunk: int = 0
    chunks: int = 0
    images: list = field(default_factory=list)
    failure: Failure | None = None
    pipe: Any = None  # the Pipeline that ran it (for previews and the info text)
    preview: Any = None  # x0 of the first image at the latest step
    cancel_reason: str | None = None

    def __post_init__(self):
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def request_cancel(self, reason: str) -> None:
        self.cancel_reason = self.cancel_reason or reason
        self._cancel.set()

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) once the job has finished; at once if it has."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def release(self) -> None:
        """Drop the pictures, start image and Pipeline reference once the answer has been sent."""
        self.images, self.pipe, self.preview, self.init_image, self.mask_image = [], None, None, None, None

    def describe(self) -> str:
        s = self.settings
        return f"{s.num_images} image(s) of {s.width}x{s.height}" if s is not None else "a request"

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def finish(self, status: str, failure: Failure | None = None) -> None:
        with self._lock:
            self.status, self.failure, self.finished = status, failure, time.monotonic()
            self.preview = None
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a closed event loop: nobody is waiting any more
                pass


class JobQueue:
    """A bounded FIFO of waiting jobs plus the set of running ones, shared by all workers."""

    def __init__(self, capacity: int, workers: int = 1):
        if capacity < 1:
            raise UserError(f"the queue size must be at least 1, not {capacity}")
        self.capacity, self.workers = capacity, max(1, workers)
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self._recent: dict[str, Job] = {}
        self.seconds_per_job = 2.0  # running mean of job durations, for Retry-After
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    # -- producers (the web handlers) ------------------------------------------------------
    def full(self) -> bool:
        with self._cond:
            return len(self._waiting) >= self.capacity

    def refusal(self) -> Exception:
        """What a request is told when it cannot queue now."""
        return ShuttingDown() if self._closed else QueueFull(self.retry_after())

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                raise ShuttingDown
            if job.id in self._recent and not self._recent[job.id].done:
                raise FieldError("force_task_id", f"task id {job.id!r} is already queued or running; use a new one")
            if len(self._waiting) >= self.capacity:
                raise QueueFull(self.retry_after())
            self._waiting.append(job)
            self._remember(job)
            self._cond.notify()
        return job

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: one mean job time, shared among the workers."""
        return max(1, min(3600, math.ceil(self.seconds_per_job / self.workers)))

    def cancel(self, job: Job, reason: str) -> None:
        """Drop a waiting job at once; ask a running one to stop at its next sampling step."""
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                job.cancel_reason = reason
                job.finish("cancelled", Failure(499, reason))
                return
        if not job.done:
            job.request_cancel(reason)

    def interrupt_running(self, reason: str = "interrupted") -> int:
        with self._cond:
            running = list(self.running)
        for job in running:
            job.request_cancel(reason)
        return len(running)

    # -- look-ups ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._recent.get(job_id)

    def position(self, job: Job) -> int:
        """How many jobs run or wait ahead of `job` (0 when it runs or has finished)."""
        with self._cond:
            if job in self._waiting:
                return self._waiting.index(job) + len(self.running)
            return 0

    def snapshot(self) -> tuple[list[Job], int]:
        with self._cond:
            return list(self.running), len(self._waiting)

    # -- consumers (the workers) ------------------------------------------------------------
    def take(self, timeout: float = 0.5) -> Job | None:
        with self._cond:
            if not self._waiting and not self._closed:
                self._cond.wait(timeout)
            if not self._waiting:
                return None
            job = self._waiting.popleft()
            job.status, job.started = "running", time.monotonic()
            self.running.append(job)
            return job

    def finished(self, job: Job) -> None:
        with self._cond:
            if job in self.running:
                self.running.remove(job)
            if job.kind == "generate" and job.status in ("done", "interrupted") and job.started:
                self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (job.finished - job.started)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in waiting:
            job.finish("cancelled", Failure(503, SHUTTING_DOWN))

    def _remember(self, job: Job) -> None:
        self._recent[job.id] = job
        if len(self._recent) > RECENT_JOBS:
            for key in list(itertools.islice((k for k, j in self._recent.items() if j.done), len(self._recent) - RECENT_JOBS)):
                del self._recent[key]
