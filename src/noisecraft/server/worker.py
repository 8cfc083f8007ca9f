"""One worker thread per device, each owning that device's `Pipeline`, all fed by one `JobQueue`.

The worker runs a job's images one batch (`Settings.part`) per `Pipeline` call; the Pipeline's
per-step callback reports progress and raises `Interrupted` when the job was cancelled, so an
interrupt takes effect within one sampling step. A failing job ends with an HTTP status and one
sentence; the worker frees memory and takes the next job. Requests are resolved against a loaded
model in one separate thread (`WorkerPool.resolve`), never on the web server's event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch

from .. import devices
from ..errors import OutOfMemory, UserError, out_of_memory
from ..settings import Limits, Request
from .catalog import Catalog, ModelEntry
from .errors import FieldError
from .jobs import SHUTTING_DOWN, Failure, Interrupted, Job, JobQueue

log = logging.getLogger("noisecraft.server")


def load_pipeline(entry: ModelEntry, device: str):
    """The default loader: `Pipeline.from_pretrained` (the server itself holds no model logic)."""
    from ..pipeline import Pipeline

    return Pipeline.from_pretrained(entry.path, device=device)


class Worker:
    """One thread and one device: loads the model a job asks for and runs the job's batches."""

    def __init__(self, queue: JobQueue, device: str, loader: Callable = load_pipeline):
        self.queue, self.device, self.loader = queue, device, loader
        self.entry: ModelEntry | None = None
        self.pipe = None
        self.controlnets: dict = {}  # path -> a ControlNet loaded on this device, kept for the next request
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"noisecraft-worker-{device}", daemon=True)

    def load(self, entry: ModelEntry) -> Any:
        if self.entry != entry:
            self.entry, self.pipe = None, None  # drop the old model before loading the next
            devices.free_memory(self.device)
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
            if job.kind == "upscale":
                job.chunks = 1
                images.append(self._upscaled(job, pipe, job.init_image, job.request, 0))
                job.images = [job.touch_up(i) for i in images] if job.touch_up else images
                job.finish("done")
                return
            if job.settings is None:  # the model was not loaded when the request came: resolve against it now
                job.settings = pipe.resolve(job.request, init_image=job.init_image, mask_image=job.mask_image, limits=job.limits)
            self._draw(job, pipe, images)
            job.images = images
            job.finish("done")
            return
        except Interrupted:
            if job.cancel_reason == SHUTTING_DOWN:  # Ctrl+C: the client is told to come back, not given half a job
                job.images = []
                job.finish("failed", Failure(503, SHUTTING_DOWN))
                return
            job.images = images
            job.finish("interrupted")
            return
        except FieldError as error:
            failure = Failure(422, str(error), error.loc)
        except (torch.OutOfMemoryError, MemoryError):
            s = job.settings
            failure = Failure(507, str(out_of_memory(s.num_images, s.width, s.height) if s else out_of_memory()))
        except OutOfMemory as error:
            failure = Failure(507, str(error))
        except _LoadFailed as error:
            failure = Failure(500, str(error))
        except UserError as error:
            failure = Failure(422, str(error), field=error.field)
        except Exception as error:  # a fault in this job only: say so, keep serving
            log.exception("job %s failed", job.id)
            failure = Failure(500, f"generation failed with an internal error ({type(error).__name__}: {str(error)[:200]}); "
                                   "the next request will be tried afresh")
        images.clear()
        job.images = []
        if failure.status in (500, 507):
            devices.free_memory(self.device)  # before answering, so the next job starts with the memory back
        job.finish("failed", failure)

    def _draw(self, job: Job, pipe, images: list) -> None:
        """The job's images, one batch per Pipeline call; `images` holds those done if it is interrupted."""
        s = job.settings
        extra = {"controls": [unit.control(self._controlnet(pipe, unit.offered.path)) for unit in job.controls]} if job.controls else {}
        starts = list(range(0, s.num_images, s.batch_size))
        job.chunks = len(starts)
        for index, start in enumerate(starts):
            if job.cancelled:
                raise Interrupted
            job.chunk = index
            part = s.part(start, min(s.batch_size, s.num_images - start))
            drawn = pipe(part, init_image=job.init_image, mask_image=job.mask_image, **extra,
                         callback=lambda step, total, x0, i=index: self._on_step(job, i, step, total, x0))
            if job.upscale is not None:  # the second pass, picture by picture, each with its own seed
                drawn = [self._upscaled(job, pipe, image, dataclasses.replace(job.request, seed=seed), index)
                         for image, seed in zip(drawn, part.seeds)]
            if job.touch_up is not None:
                drawn = [job.touch_up(image) for image in drawn]
            images += drawn
            job.images = list(images)
            job.fraction = (index + 1) / len(starts)

    def _controlnet(self, pipe, path):
        if path not in self.controlnets:
            log.info("loading ControlNet %s on %s", path, self.device)
            self.controlnets[path] = pipe.load_controlnet(path)
        return self.controlnets[path]

    def _upscaled(self, job: Job, pipe, image, request: Request, chunk: int):
        """`image` through `job.upscale` (its prompt, sampler and seed from `request`)."""
        from ..upscale import upscale

        up = job.upscale
        request = dataclasses.replace(request, steps=up.steps or request.steps, num_images=1)
        picture, how = upscale(pipe, image, up.scale, request, strength=up.strength, upscaler=up.upscaler,
                               limits=job.limits, callback=lambda step, total, x0: self._on_step(job, chunk, step, total, x0))
        picture.info["upscaled"] = how
        return picture

    def _on_step(self, job: Job, chunk: int, step: int, total: int, x0) -> None:
        job.step, job.steps = step, total
        job.fraction = (chunk + step / max(1, total)) / max(1, job.chunks)
        job.preview = x0[:1].detach() if isinstance(x0, torch.Tensor) else None
        if job.cancelled:
            raise Interrupted


class _LoadFailed(Exception):
    pass


class WorkerPool:
    """The queue and one `Worker` per device, all serving the models of one `Catalog`."""

    def __init__(self, catalog: Catalog, devices: list[str] | None = None, queue_size: int = 16,
                 loader: Callable = load_pipeline):
        self.catalog = catalog
        devices = devices or ["auto"]
        self.queue = JobQueue(queue_size, workers=len(devices))
        self.workers = [Worker(self.queue, device, loader) for device in devices]
        self.current = catalog.default  # the model jobs use unless they name another (A1111's option)
        self._resolver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="noisecraft-resolve")

    def start(self) -> None:
        """Load the default model on every device (errors surface here, before serving), then start."""
        for worker in self.workers:
            worker.load(self.current)
        for worker in self.workers:
            worker.start()

    def begin_shutdown(self) -> None:
        """Take no more jobs: waiting ones and the running ones (within a step) are answered 503."""
        self.queue.close()
        self.queue.interrupt_running(SHUTTING_DOWN)

    def stop(self, timeout: float = 60) -> None:
        """Stop the workers, waiting up to `timeout` s for each to finish its interrupted step (a thread still
        inside PyTorch when the process exits would abort it)."""
        for worker in self.workers:
            worker.stop()
        self.begin_shutdown()
        for worker in self.workers:
            if worker.thread.is_alive():
                worker.thread.join(timeout=timeout)
        self._resolver.shutdown(wait=False, cancel_futures=True)

    def loaded(self, entry: ModelEntry):
        """A loaded Pipeline of `entry` to resolve requests against, or None."""
        for worker in self.workers:
            pipe, current = worker.pipe, worker.entry
            if current == entry and pipe is not None:
                return pipe
        return None

    def any_pipeline(self):
        """Some loaded Pipeline (for what all models share)."""
        return next((w.pipe for w in self.workers if w.pipe is not None), None)

    def traits(self, entry: ModelEntry | None = None):
        """The loaded Pipeline of `entry` (default: the current model), else any loaded one: for its sizes and defaults."""
        return self.loaded(entry or self.current) or self.any_pipeline()

    def resolve(self, pipe, request: Request, init_image=None, mask_image=None, limits: Limits | None = None) -> Future:
        """`pipe.resolve(...)` in the pool's one resolving thread (it may run the text encoder, for the subject)."""
        return self._resolver.submit(pipe.resolve, request, init_image=init_image, mask_image=mask_image, limits=limits)
