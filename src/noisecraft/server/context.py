"""What every route needs: the worker pool and the server's settings, handed over as a FastAPI dependency."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ..presets import builtin
from ..settings import Limits
from .preview import Previews
from .security import LOCAL_NAMES
from .worker import WorkerPool


@dataclass
class ServerSettings:
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: tuple[str, ...] | None = LOCAL_NAMES  # Host names requests may give; None: any (`security.allowed_hosts`)
    limits: Limits = field(default_factory=Limits)
    disconnect_poll_s: float = 0.25
    max_body: int = 64 * 2**20
    body_timeout: float = 30.0  # seconds for a request's whole body to arrive
    upscalers: dict = field(default_factory=dict)  # name -> a loaded upscaler file (`--upscaler`)
    presets: list = field(default_factory=builtin)  # `noisecraft.presets.Preset`s: the page's, A1111's styles, OpenAI's style
    brands: dict = field(default_factory=dict)  # name -> `noisecraft.brand.BrandKit` (`serve --brand DIR`)
    sign: bool = False  # sign every picture (`serve --sign`); a kit with sign = true signs its own anyway
    identity: Any = None  # who signs (`serve --certificate/--key`); None: the local identity
    controlnets: dict = field(default_factory=dict)  # title -> `server.controlnets.Offered` (`serve --controlnet`)
    training_dir: str | None = None  # where fine-tuning jobs keep photos and runs; None: the gallery's folder/finetune


@dataclass
class Context:
    pool: WorkerPool
    settings: ServerSettings
    previews: Previews = field(default_factory=Previews)
    gallery: Any = None  # a `noisecraft.gallery.Gallery`, or None: pictures are not kept
    url_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))  # signs /v1/images/files URLs
    trainings: Any = None  # the fine-tuning queue (`server.training.Trainings`)


def context(request: Request) -> Context:
    """The routes' dependency: the `Context` that `create_app` put on the app."""
    return request.app.state.context
