"""uvicorn as `noisecraft serve` runs it: a deadline for each request's headers, and Ctrl+C that
answers the waiting and running requests (503) instead of dropping them.

uvicorn times out only idle keep-alive connections; a client that opens a connection and sends its
headers slowly or never (a half-open connection) would hold it forever. `TimedH11Protocol` closes
a connection whose next request's headers have not all arrived `HEADER_TIMEOUT` seconds after it
opened or after the last answer. Slow bodies are `security.Guard`'s (408).
"""

from __future__ import annotations

from typing import Callable

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0


class TimedH11Protocol(H11Protocol):
    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._seen, self._deadline = None, None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        if self.cycle is self._seen and not self.transport.is_closing():  # no new request began: close it
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and self.cycle is not self._seen:  # a request's headers arrived
            self._seen = self.cycle
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


class Server(uvicorn.Server):
    """uvicorn's server, calling `on_exit` (the pool's `begin_shutdown`) as soon as a stop is asked for."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]):
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def config(app, log_level: str = "info", header_timeout: float = HEADER_TIMEOUT, graceful_s: float = 60) -> uvicorn.Config:
    """uvicorn's config for `app`: TimedH11Protocol with `header_timeout`; at a stop, `graceful_s` for the answers
    to go out (running jobs are interrupted within a sampling step, so this bounds one step's time)."""
    protocol = type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": header_timeout})
    return uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=graceful_s, http=protocol)
