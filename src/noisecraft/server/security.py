"""Who may use the server: the API key check, and refusing to listen openly without one.

The key is compared in constant time and never echoed, logged or stored anywhere but this object.
"""


import base64
import binascii
import ipaddress
import secrets

from fastapi import Request, Security
from fastapi.security import HTTPBasic, HTTPBearer

from ..errors import UserError


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


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to serve other machines without a key, unless the user says --insecure."""
    if not is_loopback(host) and not api_key and not insecure:
        raise UserError(f"--host {host} lets other machines in, so set a key with --api-key KEY (or the "
                        "NOISECRAFT_API_KEY environment variable), or add --insecure to serve without one")


class ApiKey:
    """The key check: passes when no key is set, or the request carries it.

    Accepted: ``Authorization: Bearer KEY``, or Basic auth (A1111's ``--api-auth``) whose password
    is KEY, or whose ``user:password`` is KEY.
    """

    def __init__(self, key: str | None):
        self._key = key.encode() if key else None

    @property
    def required(self) -> bool:
        return self._key is not None

    def __repr__(self) -> str:  # never show the key, even in a debugger or a log of the app's state
        return f"ApiKey(required={self.required})"

    def matches(self, authorization: str | None) -> bool:
        if self._key is None:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        value = value.strip()
        scheme = scheme.lower()
        if scheme == "bearer":
            return secrets.compare_digest(value.encode(), self._key)
        if scheme == "basic":
            try:
                pair = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            _, _, password = pair.partition(b":")
            return secrets.compare_digest(password, self._key) | secrets.compare_digest(pair, self._key)
        return False


async def documented_auth(_bearer=Security(bearer_scheme), _basic=Security(basic_scheme)) -> None:
    """Declares the schemes in the OpenAPI document; `AuthMiddleware` does the checking."""


class AuthMiddleware:
    """Plain ASGI, deny by default: every path but the page, its files and the docs needs the key.

    Runs before the body is read (an unauthenticated client cannot make the server parse megabytes),
    and refuses bodies over `max_body` bytes with 413.
    """

    def __init__(self, app, key: ApiKey, public: tuple[str, ...], public_prefixes: tuple[str, ...], max_body: int):
        self.app, self.key, self.public, self.prefixes, self.max_body = app, key, public, public_prefixes, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.key.required and path not in self.public and not path.startswith(self.prefixes):
            if not self.key.matches(headers.get("authorization")):
                return await _json(send, 401, "this server needs its API key: send 'Authorization: Bearer KEY' "
                                              "(or Basic auth with the key as password)",
                                   [(b"www-authenticate", b'Bearer realm="noisecraft"')])
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return await _json(send, 413, f"the request body is larger than {self.max_body // 2**20} MB")
        await self.app(scope, receive, send)


async def _json(send, status: int, message: str, extra: list | None = None) -> None:
    import json

    body = json.dumps({"detail": message}).encode()
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
