"""Jobs, one bounded FIFO queue, and one worker thread per device that owns that device's `Pipeline`.

A request becomes a `Job` holding a `plan` (validated settings split into chunks of images). The
worker runs the chunks one `Pipeline` call at a time; the Pipeline's per-step callback reports
progress and raises `Interrupted` when the job was cancelled, so an interrupt takes effect within
one sampling step. A failing job ends with an HTTP status and one sentence; the worker frees memory
and takes the next job.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import OutOfMemory, UserError
from .catalog import Catalog, ModelEntry

log = logging.getLogger("noisecraft.server")

RECENT_JOBS = 256  # finished jobs kept for /queue look-ups


class Interrupted(Exception):
    """Raised from the sampling callback to stop a cancelled job (not a RuntimeError: Pipeline re-raises it)."""


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; try again in {retry_after} s")
        self.retry_after = retry_after


class FieldError(UserError):
    """A request value the model cannot take: HTTP 422 naming `field` (a path of A1111 field names)."""

    def __init__(self, field: str | tuple, message: str):
        super().__init__(message)
        self.loc = (field,) if isinstance(field, str) else tuple(field)


@dataclass
class Failure:
    status: int  # 422 (the request), 500 (a fault), 507 (out of memory), 499 (client gone)
    message: str
    loc: tuple = ()


@dataclass(eq=False)
class Job:
    """One request's work. `kind` "generate" runs `plan`; "load" only makes `model` current."""

    model: ModelEntry
    kind: str = "generate"
    plan: Any = None  # has .chunks() -> [(seed, count)] and .kwargs for Pipeline.__call__
    prepare: Callable | None = None  # prepare(pipe) -> plan, when the model was not loaded to validate against
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
        self.images, self.pipe, self.preview, self.prepare = [], None, None, None
        if self.plan is not None and hasattr(self.plan, "kwargs"):
            self.plan.kwargs = {k: v for k, v in self.plan.kwargs.items() if k not in ("init_image", "mask_image")}

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
        self._seconds_per_job = 2.0  # running mean of job durations, for Retry-After
        self._closed = False

    # -- producers (the web handlers) ------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._cond:
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
        return max(1, min(3600, math.ceil(self._seconds_per_job / self.workers)))

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
                self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * (job.finished - job.started)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            self._cond.notify_all()
        for job in waiting:
            job.finish("cancelled", Failure(503, "the server is shutting down"))

    def _remember(self, job: Job) -> None:
        self._recent[job.id] = job
        if len(self._recent) > RECENT_JOBS:
            for key in list(itertools.islice((k for k, j in self._recent.items() if j.done), len(self._recent) - RECENT_JOBS)):
                del self._recent[key]


def load_pipeline(entry: ModelEntry, device: str):
    """The default loader: `Pipeline.from_pretrained` (the server itself holds no model logic)."""
    from ..pipeline import Pipeline

    return Pipeline.from_pretrained(entry.path, device=device)


class Worker:
    """One thread and one device: loads the model a job asks for and runs the job's chunks."""

    def __init__(self, queue: JobQueue, device: str, loader: Callable = load_pipeline):
        self.queue, self.device, self.loader = queue, device, loader
        self.entry: ModelEntry | None = None
        self.pipe = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"noisecraft-worker-{device}", daemon=True)

    def load(self, entry: ModelEntry) -> Any:
        if self.entry != entry:
            self.entry, self.pipe = None, None  # drop the old model before loading the next
            _free_memory(self.device)
            log.info("loading model %s on %s", entry.title, self.device)
            self.pipe = self.loader(entry, self.device)
            self.entry = entry
        return self.pipe

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.queue.take()
            if job is None:
                continue
            try:
                self.run(job)
            except Exception:  # `run` answers every job itself; this only keeps the worker alive
                log.exception("worker error on job %s", job.id)
                if not job.done:
                    job.finish("failed", Failure(500, "the worker failed on this job; the next one will be tried"))
            finally:
                self.queue.finished(job)

    def run(self, job: Job) -> None:
        images: list = []
        failure: Failure | None = None
        try:
            if job.cancelled:
                raise Interrupted
            try:
                pipe = self.load(job.model)
            except UserError as error:
                log.error("model %s could not be loaded: %s", job.model.title, error)
                raise _LoadFailed(f"model {job.model.name!r} could not be loaded; the server log says why") from None
            job.pipe = pipe
            if job.kind == "load":
                job.finish("done")
                return
            plan = job.plan if job.plan is not None else job.prepare(pipe)
            job.plan = plan
            chunks = plan.chunks()
            job.chunks = len(chunks)
            for index, (seed, count) in enumerate(chunks):
                if job.cancelled:
                    raise Interrupted
                job.chunk = index
                images += pipe(**plan.kwargs, seed=seed, num_images=count, batch_size=count,
                               callback=lambda step, total, x0, i=index: self._on_step(job, i, step, total, x0))
                job.images = list(images)
                job.fraction = (index + 1) / len(chunks)
            job.images = images
            job.finish("done")
            return
        except Interrupted:
            job.images = images
            job.finish("interrupted")
            return
        except FieldError as error:
            failure = Failure(422, str(error), error.loc)
        except (torch.OutOfMemoryError, MemoryError):
            failure = Failure(507, _oom_message(job))
        except OutOfMemory as error:
            failure = Failure(507, str(error))
        except _LoadFailed as error:
            failure = Failure(500, str(error))
        except UserError as error:
            from .schemas import field_of

            failure = Failure(422, str(error), field_of(error))
        except Exception as error:  # a fault in this job only: say so, keep serving
            log.exception("job %s failed", job.id)
            failure = Failure(500, f"generation failed with an internal error ({type(error).__name__}: {str(error)[:200]}); "
                                   "the next request will be tried afresh")
        images = []
        job.images = []
        if failure.status in (500, 507):
            _free_memory(self.device)  # before answering, so the next job starts with the memory back
        job.finish("failed", failure)

    def _on_step(self, job: Job, chunk: int, step: int, total: int, x0) -> None:
        job.step, job.steps = step, total
        job.fraction = (chunk + step / max(1, total)) / max(1, job.chunks)
        job.preview = x0[:1].detach() if isinstance(x0, torch.Tensor) else None
        if job.cancelled:
            raise Interrupted


class _LoadFailed(Exception):
    pass


def _oom_message(job: Job) -> str:
    plan = job.plan
    if plan is not None and hasattr(plan, "describe"):
        return f"out of memory making {plan.describe()}; lower the size or the number of images"
    return "out of memory; lower the size or the number of images"


def _free_memory(device: str) -> None:
    gc.collect()
    if torch.cuda.is_available() and str(device).startswith(("cuda", "auto")):
        torch.cuda.empty_cache()
    elif str(device).startswith("mps") and hasattr(torch, "mps"):
        torch.mps.empty_cache()


class WorkerPool:
    """The queue and one `Worker` per device, all serving the models of one `Catalog`."""

    def __init__(self, catalog: Catalog, devices: list[str] | None = None, queue_size: int = 16,
                 loader: Callable = load_pipeline):
        self.catalog = catalog
        devices = devices or ["auto"]
        self.queue = JobQueue(queue_size, workers=len(devices))
        self.workers = [Worker(self.queue, device, loader) for device in devices]
        self.current = catalog.default  # the model jobs use unless they name another (A1111's option)

    def start(self) -> None:
        """Load the default model on every device (errors surface here, before serving), then start."""
        for worker in self.workers:
            worker.load(self.current)
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.queue.close()
        self.queue.interrupt_running("the server is shutting down")
        for worker in self.workers:
            if worker.thread.is_alive():
                worker.thread.join(timeout=5)

    def loaded(self, entry: ModelEntry):
        """A loaded Pipeline of `entry` to validate requests against, or None."""
        for worker in self.workers:
            pipe, current = worker.pipe, worker.entry
            if current == entry and pipe is not None:
                return pipe
        return None

    def any_pipeline(self):
        """Some loaded Pipeline (for what all models share, such as img2img support)."""
        return next((w.pipe for w in self.workers if w.pipe is not None), None)
