"""Who may use the server, and what a request may be: checked before any route runs.

`Guard` (plain ASGI, deny by default), in this order:

1. Host: a request must name this server (`localhost`, `127.0.0.1`, `[::1]`, the `--host` and any
   `--allowed-host`), or a web page the user visits could rebind its own domain to 127.0.0.1 and
   drive a keyless server (DNS rebinding). Others get 421.
2. Origin: a state-changing request (POST, PUT, PATCH, DELETE) sent by a browser from another
   site (its ``Origin`` is neither this server nor a `--cors-origin`) is refused with 403, so a
   page elsewhere cannot post a form to /interrupt (CSRF). Clients other than browsers send no Origin.
3. The API key (when set): ``Authorization: Bearer KEY``, or Basic auth whose password (or
   ``user:password``) is KEY, compared as bytes in constant time. 401 otherwise.
4. The body: at most `max_body` bytes whether or not ``Content-Length`` says so (a chunked body
   is counted as it arrives, and nothing past the limit is kept), within `body_timeout` seconds.
   413 or 408 otherwise.

The key is never echoed, logged or stored anywhere but the `ApiKey` object.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import secrets
from urllib.parse import urlsplit

from fastapi import Request, Security
from fastapi.security import HTTPBasic, HTTPBearer

from ..errors import UserError
from .errors import openai_error

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
MIN_KEY_LENGTH = 8


class _DocumentedBearer(HTTPBearer):
    async def __call__(self, request: Request):  # declared for /docs' "Authorize" button; `ApiKey` reads the header
        return None


class _DocumentedBasic(HTTPBasic):
    async def __call__(self, request: Request):
        return None


bearer_scheme = _DocumentedBearer(auto_error=False, description="Authorization: Bearer <api key>")
basic_scheme = _DocumentedBasic(auto_error=False, description="A1111's --api-auth style: any user name, the key as password")


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name that may resolve to anything: treat as exposed


def is_wildcard(host: str) -> bool:
    """Whether `host` listens on every address of the machine (0.0.0.0, ::)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to serve other machines without a key, unless the user says --insecure; refuse weak keys."""
    if api_key is not None:
        check_key(api_key)
    if not is_loopback(host) and not api_key and not insecure:
        raise UserError(f"--host {host} lets other machines in, so set a key with --api-key KEY (or the "
                        "NOISECRAFT_API_KEY environment variable), or add --insecure to serve without one")


def check_key(key: str) -> None:
    """A key clients can send and nobody guesses: printable, no spaces, at least MIN_KEY_LENGTH characters."""
    if len(key) < MIN_KEY_LENGTH or not key.isprintable() or any(c.isspace() for c in key):
        raise UserError(f"the API key must be at least {MIN_KEY_LENGTH} characters without spaces or control "
                        "characters; choose a longer random one (for example: python -c \"import secrets; print(secrets.token_urlsafe())\")")


def allowed_hosts(host: str, extra: list[str] | tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The names a request's Host may give for a server listening on `host`; None: any (a wildcard
    address with no --allowed-host, reached by whatever names the machine has)."""
    if is_wildcard(host) and not extra:
        return None
    return tuple(dict.fromkeys(name.strip("[]").lower() for name in (*LOCAL_NAMES, host, *extra)))


class ApiKey:
    """The key check: passes when no key is set, or the request carries it."""

    def __init__(self, key: str | None):
        self._key = key.encode("utf-8") if key else None

    @property
    def required(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:  # never show the key, even in a debugger or a log of the app's state
        return f"ApiKey(required={self.required})"

    def matches(self, authorization: bytes | None) -> bool:
        """`authorization` is the header's raw bytes (a key may hold any UTF-8 character)."""
        if self._key is None:
            return True
        scheme, _, value = (authorization or b"").partition(b" ")
        value, scheme = value.strip(), scheme.lower()
        if scheme == b"bearer":
            return secrets.compare_digest(value, self._key)
        if scheme == b"basic":
            try:
                pair = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            _, _, password = pair.partition(b":")
            return secrets.compare_digest(password, self._key) | secrets.compare_digest(pair, self._key)
        return False


async def documented_auth(_bearer=Security(bearer_scheme), _basic=Security(basic_scheme)) -> None:
    """Declares the schemes in the OpenAPI document; `Guard` does the checking."""


class Guard:
    """The checks of the module docstring, before the app sees a request."""

    def __init__(self, app, *, key: ApiKey, public: tuple[str, ...], public_prefixes: tuple[str, ...], max_body: int,
                 hosts: tuple[str, ...] | None = LOCAL_NAMES, origins: tuple[str, ...] = (), body_timeout: float = 30.0):
        self.app, self.key, self.public, self.prefixes, self.max_body = app, key, public, public_prefixes, max_body
        self.hosts = None if hosts is None else {h.strip("[]").lower() for h in hosts}
        self.origins, self.body_timeout = {o.rstrip("/").lower() for o in origins}, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name.lower(), value)
        host = headers.get(b"host", b"").decode("latin-1")
        path = scope.get("path", "")
        if self.hosts is not None and _host_name(host) not in self.hosts:
            return await _json(send, path, 421, "this server does not answer to that host name; open it as "
                                          "http://127.0.0.1 or http://localhost, or start it with --allowed-host NAME")
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
        if scope.get("method") in STATE_CHANGING and origin and not self._same_site(origin, host):
            return await _json(send, path, 403, "requests from other web sites are refused; use the page this server serves, "
                                          "or start it with --cors-origin for that site")
        if self.key.required and path not in self.public and not path.startswith(self.prefixes):
            if not self.key.matches(headers.get(b"authorization")):
                return await _json(send, path, 401, "this server needs its API key: send 'Authorization: Bearer KEY' "
                                              "(or Basic auth with the key as password)",
                                   [(b"www-authenticate", b'Bearer realm="noisecraft"')])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_body:
            return await _json(send, path, 413, f"the request body is larger than {self.max_body // 2**20} MB")
        body = await self._read_body(receive, send, path)
        if body is None:
            return
        await self.app(scope, _replay(body, receive), send)

    def _same_site(self, origin: str, host: str) -> bool:
        return origin in self.origins or urlsplit(origin).netloc == host.lower()

    async def _read_body(self, receive, send, path: str) -> list[dict] | None:
        """The request's body messages, at most `max_body` bytes within `body_timeout` s; None when refused."""
        messages, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                await _json(send, path, 408, f"the request body did not arrive within {self.body_timeout:g} s")
                return None
            if message["type"] != "http.request":
                return [message]  # the client left: the app sees it go
            size += len(message.get("body", b""))
            if size > self.max_body:
                await _json(send, path, 413, f"the request body is larger than {self.max_body // 2**20} MB")
                return None
            messages.append(message)
            if not message.get("more_body"):
                return messages


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: '127.0.0.1:7860' -> '127.0.0.1', '[::1]:80' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _replay(messages: list[dict], receive):
    """A `receive` that gives the already-read body messages first, then the connection's own (its disconnect)."""
    pending = list(messages)

    async def replayed():
        return pending.pop(0) if pending else await receive()

    return replayed


async def _json(send, path: str, status: int, message: str, extra: list | None = None) -> None:
    shaped = openai_error(status, message) if path.startswith("/v1/") else {"detail": message}  # OpenAI's clients read theirs
    body = json.dumps(shaped).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Plain ASGI (keeps `request.is_disconnected` working): no sniffing, no framing, no referrer."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
