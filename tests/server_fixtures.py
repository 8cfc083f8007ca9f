"""Shared by the server tests: a real uvicorn server in a background thread, and a Pipeline wrapper
that lets a test hold a job at a sampling step, count calls, and inject faults."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from noisecraft.pipeline import Pipeline
from noisecraft.server.app import create_app
from noisecraft.server.runner import config
from noisecraft.server.catalog import Catalog, ModelEntry
from noisecraft.server.context import ServerSettings
from noisecraft.settings import Limits
from noisecraft.server.worker import WorkerPool

from helpers import tiny_model_file

_PIPES: dict[str, Pipeline] = {}
_FILES: dict[tuple, Path] = {}


def model_file(tmp_root: Path, kind: str = "pixel", text: bool = False, seed: int = 0) -> Path:
    """One tiny model file per (kind, text, seed) for the whole session."""
    key = (kind, text, seed)
    if key not in _FILES:
        _FILES[key] = tiny_model_file(tmp_root / f"tiny-{kind}-{'text' if text else 'uncond'}-{seed}.safetensors",
                                      kind=kind, text=text, seed=seed)
    return _FILES[key]


def cached_pipeline(path: Path | None) -> Pipeline:
    """Each model loaded once per session (the MiniLM text encoder takes seconds)."""
    key = str(path)
    if key not in _PIPES:
        _PIPES[key] = Pipeline.from_pretrained(path, device="cpu")
    return _PIPES[key]


class Controlled:
    """A Pipeline stand-in that behaves exactly like `pipe`, plus test controls.

    `hold.clear()` makes every sampling step (after the server's callback) wait until `hold.set()`;
    `reached` is set at each step. `faults` / `outside_faults` map a prompt substring to an exception.
    """

    def __init__(self, pipe: Pipeline):
        self.pipe = pipe
        self.calls = 0
        self.steps_seen: list[tuple[str, int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.reached = threading.Event()
        self.faults: dict[str, BaseException] = {}  # raised inside the sampling loop
        self.outside_faults: dict[str, BaseException] = {}  # raised before the Pipeline is called

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, request, *args, callback=None, **kwargs):
        self.calls += 1
        prompt = getattr(request, "prompt", request)  # the server passes resolved Settings
        fault = next((error for key, error in self.faults.items() if key in prompt), None)

        outside = next((error for key, error in self.outside_faults.items() if key in prompt), None)
        if outside is not None:
            raise outside

        def on_step(step, total, x0):
            self.steps_seen.append((prompt, step))
            if callback is not None:
                callback(step, total, x0)  # the server's: records progress, raises if interrupted
            self.reached.set()
            if not self.hold.wait(30):
                raise RuntimeError("test hold never released")
            if fault is not None:
                raise fault

        return self.pipe(request, *args, callback=on_step, **kwargs)


def entry_for(path: Path | None, name: str | None = None) -> ModelEntry:
    """The catalog entry `noisecraft serve --model path` would make (renamed to `name` if given)."""
    entry = Catalog.from_paths([str(path) if path else None]).entries[0]
    return ModelEntry(name, entry.path, entry.hash) if name else entry


def make_pool(models: dict[ModelEntry, object], queue_size: int = 4) -> WorkerPool:
    """A one-worker pool whose 'loads' hand out the given (already loaded) pipelines."""
    entries = list(models)
    return WorkerPool(Catalog(entries), ["cpu"], queue_size, loader=lambda entry, device: models[entry])


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextmanager
def running_server(pool: WorkerPool, settings: ServerSettings | None = None, header_timeout: float = 10.0, gallery=None):
    """Start `pool` and uvicorn (as `noisecraft serve` runs it) on a free port in this process; yield the base URL; stop both."""
    settings = settings or ServerSettings(limits=Limits())
    pool.start()
    app = create_app(pool, settings, gallery)
    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(config(app, "warning", header_timeout=header_timeout, graceful_s=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for worker in pool.workers:
            pipe = worker.pipe
            if isinstance(pipe, Controlled):
                pipe.hold.set()
        server.should_exit = True
        thread.join(timeout=10)
        pool.stop()
        sock.close()
