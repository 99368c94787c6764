"""What every HTTP surface shares: errors as 4xx/5xx JSON bodies that name the field.

`install_error_handlers(app)` makes a FastAPI app answer `TrifectaError`s with their status
and `{"error": {...}}` body, request validation failures with 422 naming each bad field, and
bodies above `max_body_bytes` with 413, before they are parsed.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from trifecta.core.errors import PayloadTooLarge, QuotaExceeded, TrifectaError, field_path


def error_response(exc: TrifectaError) -> JSONResponse:
    headers = {}
    if isinstance(exc, QuotaExceeded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)


def validation_body(errors: list[Any]) -> dict[str, Any]:
    fields = [
        {"field": field_path(e.get("loc", ())), "message": e.get("msg", "invalid")} for e in errors
    ]
    first = fields[0] if fields else {"field": "", "message": "invalid request"}
    return {
        "error": {
            "code": "invalid_input",
            "message": f"{first['field']}: {first['message']}"
            if first["field"]
            else first["message"],
            "field": first["field"],
            "fields": fields,
        }
    }


async def _trifecta_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TrifectaError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(validation_body(list(exc.errors())), status_code=422)


class BodySizeLimit:
    """ASGI middleware: refuse request bodies above a limit with 413 before reading them."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and int(declared) > self.max_body_bytes:
            exc = PayloadTooLarge(
                f"body of {int(declared)} bytes exceeds {self.max_body_bytes}", field="body"
            )
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_error_handlers(app: FastAPI, *, max_body_bytes: int | None = None) -> None:
    app.add_exception_handler(TrifectaError, _trifecta_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    if max_body_bytes is not None:
        app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
