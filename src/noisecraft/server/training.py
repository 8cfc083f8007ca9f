"""Fine-tuning jobs over HTTP (`POST /finetune`): a queue of its own, one training at a time, that gives way to
every picture request.

A training runs in its own thread on its own copy of the model (the workers' pipelines are never touched:
an adapter half-trained in them would change everyone's pictures). Between two training steps it checks the
picture queue and waits while any picture job is waiting or running, so a picture request waits at most one
training step (or one sample picture at a checkpoint), never a whole training. Each training's photos, run
folder (checkpoints, samples, before/after) and LoRA file live in its own folder; a training stopped by
cancel or by the server stopping keeps its last checkpoint.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..train.finetune import STATE, FinetuneSettings
from .catalog import ModelEntry
from .jobs import QueueFull, ShuttingDown

log = logging.getLogger("noisecraft.server")
YIELD_POLL_S = 0.05


class Stopped(Exception):
    pass


@dataclass
class Training:
    model: ModelEntry
    name: str
    class_word: str
    settings: FinetuneSettings
    folder: Path
    photos: int
    id: str = field(default_factory=lambda: "ft-" + secrets.token_hex(6))
    status: str = "waiting"  # waiting, running, done, failed, cancelled
    step: int = 0
    total: int = 0
    loss: float | None = None
    best_step: int | None = None
    held_out: list = field(default_factory=list)
    error: str | None = None
    yielding: bool = False  # paused this moment for picture requests
    created: float = field(default_factory=time.time)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def run_folder(self) -> Path:
        return self.folder / "run"

    @property
    def lora_file(self) -> Path:
        return self.folder / f"{self.settings.name}.safetensors"

    def checkpoints(self) -> list[tuple[int, float]]:
        """(step, held-out loss) so far, read from the run's checkpoint header (cheap: no tensors)."""
        if self.held_out:
            return self.held_out
        state = self.run_folder / STATE
        if not state.is_file():
            return []
        from ..train.state import checkpoint_meta

        try:
            return [tuple(x) for x in checkpoint_meta(state).get("held_out", [])]
        except UserError:
            return []

    def samples_seen(self) -> int:
        folder = self.run_folder / "samples"
        return len(list(folder.glob("step-*.png"))) if folder.is_dir() else 0


class Trainings:
    """The fine-tuning queue: `capacity` trainings waiting at most, one running, after every picture job."""

    def __init__(self, pool, folder: Path, capacity: int = 4, loader=None):
        from .worker import load_pipeline

        self.pool, self.folder, self.capacity = pool, Path(folder), capacity
        self.loader = loader or load_pipeline
        self._lock = threading.Condition()
        self._waiting: deque[Training] = deque()
        self._all: dict[str, Training] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def new_folder(self) -> Path:
        """A fresh folder for one training's photos and run, named by when it came."""
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            folder = self.folder / (time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3))
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue

    def submit(self, training: Training) -> Training:
        with self._lock:
            if self._closed:
                raise ShuttingDown()
            if len(self._waiting) >= self.capacity:
                raise QueueFull(60)
            self._waiting.append(training)
            self._all[training.id] = training
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="noisecraft-finetune", daemon=True)
                self._thread.start()
            self._lock.notify()
        return training

    def get(self, training_id: str) -> Training | None:
        return self._all.get(training_id)

    def listing(self) -> list[Training]:
        return sorted(self._all.values(), key=lambda t: t.created)

    def position(self, training: Training) -> int:
        with self._lock:
            return list(self._waiting).index(training) + 1 if training in self._waiting else 0

    def cancel(self, training: Training) -> None:
        with self._lock:
            if training in self._waiting:
                self._waiting.remove(training)
                training.status = "cancelled"
        training._stop.set()

    def stop(self, timeout: float = 60) -> None:
        """Take no more; stop the running training at its next step (its last checkpoint stays)."""
        with self._lock:
            self._closed = True
            for training in self._all.values():
                training._stop.set()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    # -- the training thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait(0.5)
                if self._closed:
                    return
                training = self._waiting.popleft()
                training.status = "running"
            try:
                self._run(training)
            except Exception as error:  # one training's fault; the server goes on
                log.exception("training %s failed", training.id)
                training.status, training.error = "failed", f"the training failed ({type(error).__name__}: {str(error)[:200]})"

    def _run(self, training: Training) -> None:
        from ..files import write_bytes
        from ..train.finetune import finetune
        from ..train.photos import load_photos

        try:
            self._give_way(training)
            pipe = self.loader(training.model, self.pool.workers[0].device)
            photos = load_photos(training.folder / "photos", training.name, training.class_word,
                                 pixels=pipe.config.image_size ** 2, factor=pipe.size_factor)
            training.total = training.settings.total_steps(len(photos.photos))

            def progress(step, total, loss):
                training.step, training.total, training.loss = step, total, loss
                self._give_way(training)

            result = finetune(pipe, photos, training.run_folder, training.settings, progress)
        except Stopped:
            training.status = "cancelled"
            return
        except UserError as error:
            training.status, training.error = "failed", str(error)
            return
        write_bytes(training.lora_file, result.best_file.read_bytes())
        training.best_step, training.held_out = result.best_step, [tuple(x) for x in result.held_out]
        training.status = "done"

    def _give_way(self, training: Training) -> None:
        """Wait while any picture job waits or runs (pictures first); raise Stopped when cancelled."""
        while True:
            if training._stop.is_set() or self.pool.queue.closed:
                raise Stopped
            running, waiting = self.pool.queue.snapshot()
            if not running and not waiting:
                training.yielding = False
                return
            training.yielding = True
            time.sleep(YIELD_POLL_S)
