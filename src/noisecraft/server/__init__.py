"""`noisecraft serve`: the web page and an AUTOMATIC1111-compatible HTTP API over `Pipeline`.

    app.py         create_app: the routers, the error handlers, the middleware
    routes/        a1111.py (/sdapi/v1/*), queue.py (/queue), page.py (the page at /, /info)
    generation.py  a generation request's way: model, resolve (off the event loop), queue, answer
    jobs.py        Job and the bounded FIFO queue; worker.py one worker thread per device
    schemas.py     A1111 request/response JSON and the `Request` it asks for; encoding.py base64 pictures
    errors.py      422s naming the A1111 field; context.py what the routes share
    catalog.py     the models a server offers, by name; preview.py the picture so far
    security.py    Host, Origin, the API key and body limits before any route; security headers
    runner.py      uvicorn with a deadline for request headers, and a Ctrl+C that answers 503
    static/        the web page (plain HTML, CSS and JavaScript; no build step)
"""

from __future__ import annotations

import logging
import os
import tempfile
import socket
import sys
from dataclasses import dataclass, field

from ..errors import UserError
from .security import check_exposure

__all__ = ["ServeOptions", "serve", "check_exposure"]


@dataclass
class ServeOptions:
    models: list[str] | None = None  # paths; None: the built-in model
    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str | None = None
    insecure: bool = False
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=lambda: ["auto"])
    queue_size: int = 16
    max_images: int = 16
    max_side: int | None = None
    log_level: str = "info"
    gallery: str | None = None  # folder; None: the user's data folder
    gallery_db: str | None = None  # database URL; None: SQLite in the folder
    no_gallery: bool = False
    upscalers: list[str] = field(default_factory=list)  # ESRGAN-family files
    controlnets: list[str] = field(default_factory=list)  # ControlNet files or diffusers folders, offered by "name [hash]"
    presets: list[str] = field(default_factory=list)  # presets files offered besides the built-in ones
    brands: list[str] = field(default_factory=list)  # brand kit folders, offered by their names
    sign: bool = False  # every picture signed (C2PA + watermark)
    certificate: str | None = None  # who signs (PEM chain and key); None: the local identity
    key: str | None = None


def bind(host: str, port: int) -> socket.socket:
    """Listen before loading models, so a taken port fails fast with one sentence."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be from 0 to 65535, not {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise UserError(f"--host {host} is not an address or a name this machine can resolve") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); pick another --port or stop what uses it") from None
    return sock


def _upscalers(paths: list[str]) -> dict:
    """The --upscaler files, loaded (and so checked) before the server starts, by name."""
    from ..checkpoints.upscaler import load_upscaler

    files = {}
    for path in paths:
        up = load_upscaler(path, device="cpu")
        up.filename = os.path.basename(path)
        files[up.name] = up
    return files


def _signer(options: ServeOptions):
    """The --certificate/--key identity, checked before the server starts (None: the local one, made on first use)."""
    if bool(options.certificate) != bool(options.key):
        raise UserError("--certificate and --key go together: give both, or neither for the local identity")
    if not options.certificate:
        return None
    from ..provenance import load_identity

    return load_identity(options.certificate, options.key)


def _brands(folders: list[str]) -> dict:
    """The --brand kits, loaded (and so checked) before the server starts, by name."""
    from ..brand import load_kit

    kits = {}
    for folder in folders:
        kit = load_kit(folder)
        if kit.name in kits:
            raise UserError(f"two brand kits are named {kit.name!r} ({folder} and {kits[kit.name].folder}); rename one")
        kits[kit.name] = kit
    return kits


def serve(options: ServeOptions) -> int:
    """Run the server until Ctrl+C. Refuses an open host without a key before touching anything."""
    from ..devices import pick_device
    from ..gallery.pictures import open_gallery
    from ..presets import combined
    from ..settings import Limits
    from .app import create_app
    from .catalog import Catalog
    from .context import ServerSettings
    from .runner import Server, config
    from .security import allowed_hosts
    from .worker import WorkerPool

    check_exposure(options.host, options.api_key, options.insecure)
    for device in options.devices:
        pick_device(device)
    for flag, value in (("--max-images", options.max_images), ("--queue-size", options.queue_size),
                        ("--max-size", 1 if options.max_side is None else options.max_side)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, not {value}")
    if options.no_gallery and (options.gallery or options.gallery_db):
        raise UserError("--no-gallery keeps no pictures; leave out --gallery and --gallery-db")
    upscalers = _upscalers(options.upscalers)
    from .controlnets import offer

    controlnets = offer(options.controlnets)
    presets = combined(options.presets)
    brands = _brands(options.brands)
    signer = _signer(options)
    sock = bind(options.host, options.port)
    logging.basicConfig(level=options.log_level.upper(), format="%(levelname)s:     %(message)s")
    try:
        catalog = Catalog.from_paths(options.models)
        session = tempfile.TemporaryDirectory(prefix="noisecraft-session-") if options.no_gallery else None
        library = open_gallery(session.name if session else options.gallery, None if session else options.gallery_db)
        pool = WorkerPool(catalog, options.devices, options.queue_size)
        pool.start()
    except BaseException:
        sock.close()
        raise
    settings = ServerSettings(api_key=options.api_key or None, cors_origins=list(options.cors_origins),
                              allowed_hosts=allowed_hosts(options.host, options.allowed_hosts),
                              limits=Limits(max_images=options.max_images, max_side=options.max_side), upscalers=upscalers,
                              presets=presets, brands=brands, sign=options.sign, identity=signer,
                              controlnets=controlnets)
    app = create_app(pool, settings, library)
    port = sock.getsockname()[1]
    shown = f"[{options.host}]" if ":" in options.host else options.host
    print(f"noisecraft: serving {catalog.default.title} at http://{shown}:{port}/ (A1111 API under /sdapi/v1, OpenAI's under /v1, "
          f"docs at /docs{'; API key required' if settings.api_key else ''}). Ctrl+C stops.", file=sys.stderr, flush=True)
    print("noisecraft: no gallery: pictures are kept for this session only" if session else
          f"noisecraft: gallery: {library.folder} ({library.report.items} pictures)", file=sys.stderr, flush=True)
    server = Server(config(app, options.log_level), on_exit=pool.begin_shutdown)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after a clean shutdown: the normal way to stop
        pass
    finally:
        app.state.context.trainings.stop()
        pool.stop()
        sock.close()
        library.close()
        if session is not None:
            session.cleanup()
    print("noisecraft: stopped", file=sys.stderr)
    return 0
