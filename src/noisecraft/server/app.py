"""The HTTP app: AUTOMATIC1111's ``/sdapi/v1`` API, the queue, and the web page, over a `WorkerPool`.

Thin by design: routers (routes/) parse, hand a `Job` to the queue (generation.py), wait for it,
and encode the pictures. The denoising happens in `Pipeline`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from ..version import __version__
from .context import Context, ServerSettings
from .errors import JSONResponse, install_handlers
from .routes import a1111, docs, finetune, gallery, layouts, openai, page, queue, studio
from .security import ApiKey, Guard, SecurityHeaders, documented_auth
from .training import Trainings
from .worker import WorkerPool

PUBLIC_PATHS = ("/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")  # the page and the API's description
PUBLIC_PREFIXES = ("/static/", f"{docs.ASSETS}/", "/v1/images/files/")  # the page's files, the docs' files, signed picture links


def create_app(pool: WorkerPool, settings: ServerSettings | None = None, library=None) -> FastAPI:
    """The ASGI app for a started (or about to start) `pool`; every picture made goes into `library` (a `noisecraft.gallery.Gallery`, if any)."""
    settings = settings or ServerSettings()
    app = FastAPI(title="noisecraft", version=__version__, default_response_class=JSONResponse, docs_url=None, redoc_url=None,
                  description="Text-to-image generation with AUTOMATIC1111- and OpenAI-compatible APIs. The web page is at /.")
    app.state.context = Context(pool, settings, gallery=library, trainings=Trainings(pool, _training_dir(settings, library)))
    app.state.pool = pool
    install_handlers(app)
    openai.install(app)
    for router in (a1111.router, openai.router, studio.router, gallery.router, layouts.router, finetune.router, queue.router, page.api):
        app.include_router(router, dependencies=[Depends(documented_auth)])  # the check itself: AuthMiddleware, below
    app.include_router(page.page)
    docs.install(app)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    # Starlette runs the last-added middleware first: CORS (answers preflights), headers, then the guard.
    app.add_middleware(Guard, key=ApiKey(settings.api_key), public=PUBLIC_PATHS, public_prefixes=PUBLIC_PREFIXES,
                       max_body=settings.max_body, hosts=settings.allowed_hosts, origins=tuple(settings.cors_origins),
                       body_timeout=settings.body_timeout)
    app.add_middleware(SecurityHeaders)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"], allow_credentials=False)
    return app


def _training_dir(settings: ServerSettings, library) -> Path:
    """Where fine-tuning jobs keep their photos and runs: --training-dir, else beside the gallery, else a temporary folder."""
    if settings.training_dir:
        return Path(settings.training_dir).expanduser()
    if library is not None:
        return Path(library.folder) / "finetune"
    return Path(tempfile.mkdtemp(prefix="noisecraft-finetune-"))
