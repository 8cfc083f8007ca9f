"""What every route needs: the worker pool and the server's settings, handed over as a FastAPI dependency."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from ..settings import Limits
from .worker import WorkerPool


@dataclass
class ServerSettings:
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    disconnect_poll_s: float = 0.25
    max_body: int = 64 * 2**20


@dataclass
class Context:
    pool: WorkerPool
    settings: ServerSettings


def context(request: Request) -> Context:
    """The routes' dependency: the `Context` that `create_app` put on the app."""
    return request.app.state.context
