"""How the server says no: 422s that name the A1111 field at fault, in FastAPI's shape, and the
exception handlers that make every refusal one sentence (never a traceback, never the input echoed)."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse as _StarletteJSON

from ..errors import UserError

# `Request` field -> the A1111 request field it comes from (num_images: see `field_of`)
A1111_FIELDS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "guidance_scale": "cfg_scale",
                "guidance_rescale": "guidance_rescale", "sampler": "sampler_name", "scheduler": "scheduler",
                "width": "width", "height": "height", "num_images": "batch_size", "batch_size": "batch_size",
                "seed": "seed", "strength": "denoising_strength", "subject": "subject", "mask_image": "mask",
                "init_image": "init_images"}


class JSONResponse(_StarletteJSON):
    """JSON with every non-ASCII character escaped: a lone surrogate from a client's string can
    never make encoding the answer fail (the parsed JSON is the same)."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class FieldError(UserError):
    """A request value the server or model cannot take: HTTP 422 naming `loc` (a path of A1111 field names)."""

    def __init__(self, loc: str | tuple, message: str):
        super().__init__(message)
        self.loc = (loc,) if isinstance(loc, str) else tuple(loc)


def field_of(error: UserError | str | None, n_iter: int = 1) -> tuple:
    """The A1111 request field a `UserError` from `resolve` (or a `Request` field name) is about, as a
    422 `loc` (empty when none).

    A1111 asks for batch_size x n_iter images: a count that is wrong is n_iter's fault when there
    are several batches, batch_size's otherwise.
    """
    field = error.field if isinstance(error, UserError) else error
    if field == "num_images" and n_iter != 1:
        return ("n_iter",)
    name = A1111_FIELDS.get(field or "")
    return (name,) if name else ()


def field_error(error: UserError, n_iter: int = 1) -> FieldError:
    return FieldError(field_of(error, n_iter) or ("body",), str(error))


def unprocessable(loc, message: str) -> JSONResponse:
    loc = ["body", *loc] if loc and loc[0] != "body" else list(loc or ["body"])
    return JSONResponse({"detail": [{"type": "value_error", "loc": loc, "msg": message}]}, status_code=422)


OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                413: "invalid_request_error", 429: "requests", 500: "server_error", 503: "server_error", 507: "server_error"}
OPENAI_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error body, which its clients turn into their usual exceptions."""
    return {"error": {"message": message, "type": OPENAI_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code or OPENAI_CODES.get(status)}}


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(FieldError)
    async def field_error_handler(request: Request, error: FieldError):
        return unprocessable(error.loc, str(error))

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, error: RequestValidationError):
        # FastAPI's shape, without echoing the input back (it may be megabytes of base64)
        detail = [{"type": e.get("type"), "loc": [str(part)[:100] for part in e.get("loc", ())], "msg": str(e.get("msg"))[:500]}
                  for e in error.errors()]
        if request.url.path.startswith("/v1/"):  # OpenAI's API: its shape and status
            first = detail[0] if detail else {"loc": [], "msg": "the request is not valid"}
            param = ".".join(first["loc"][1:]) or None
            return JSONResponse(openai_error(400, f"{param or 'the request'}: {first['msg']}", param), status_code=400)
        return JSONResponse({"detail": detail}, status_code=422)
