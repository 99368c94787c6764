"""What every HTTP surface shares: errors as 4xx/5xx JSON bodies that name the field.

`install_error_handlers(app)` makes a FastAPI app answer, always in the project's
`{"error": {"code", "message", "field"}}` shape (`ErrorBody`):
- `TrifectaError`s with their status;
- request validation failures with 422 naming each bad field;
- a body that is not JSON, not UTF-8 or nested too deeply with 400 naming `body`;
- an unknown route or method with 404 / 405;
- bodies above `max_body_bytes` with 413, counted as they arrive (`BodySizeLimit`: a chunked
  body is refused once its running total passes the limit, a declared `Content-Length` above
  it before a byte is read);
- a database that cannot be reached (an outage, a full pool) with 503 `unavailable` and a
  Retry-After, a unique key two writers raced for with 409, and any other unexpected
  exception with a JSON 500 (`LastResort`), never a plain-text page or a dropped connection.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trifecta.core.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    TrifectaError,
    Unavailable,
    field_path,
)

log = logging.getLogger(__name__)

DB_RETRY_AFTER_S = 5


class FieldError(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    """One failure: a machine code, a one-line message, and the request field it concerns."""

    code: str = Field(description="e.g. invalid_input, not_found, quota_exceeded, unavailable")
    message: str
    field: str | None = Field(default=None, description="the request field at fault")
    allowed: list[str] | None = Field(default=None, description="the allowed values")
    fields: list[FieldError] | None = Field(default=None, description="every invalid field")
    retry_after: float | None = Field(default=None, description="seconds (429, 503)")


class ErrorBody(BaseModel):
    """The body of every 4xx / 5xx answer of the project's own routes."""

    error: ErrorDetail


def error_response(exc: TrifectaError) -> JSONResponse:
    headers = {}
    if isinstance(exc, QuotaExceeded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, Unavailable):
        headers["Retry-After"] = str(DB_RETRY_AFTER_S)
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)


def validation_body(errors: list[Any]) -> dict[str, Any]:
    fields = [
        # a whole part that is wrong (a body that is no object: sent as text/plain) is named
        {"field": field_path(loc) or str(loc[0] if loc else ""), "message": e.get("msg", "invalid")}
        for e in errors
        for loc in [tuple(e.get("loc", ()))]
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


def http_error(exc: HTTPException) -> TrifectaError:
    """Starlette's and FastAPI's own refusals as the project's errors."""
    detail = str(exc.detail)
    if exc.status_code == 413:
        return PayloadTooLarge("the request body is too large", field="body")
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot parse: not UTF-8, nested too deeply, ...
        return BadRequest(f"{detail.lower()} (JSON in UTF-8 expected)", field="body")
    if exc.status_code == 404:
        return NotFound(detail.lower(), field="path")
    error = TrifectaError(detail, field="method" if exc.status_code == 405 else None)
    error.status, error.code = exc.status_code, detail.lower().replace(" ", "_")
    return error


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached now (not that a query is wrong)."""
    if isinstance(exc, PoolTimeout | OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


async def _trifecta_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TrifectaError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    unparsed = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if unparsed is not None:  # FastAPI's location is a character offset, not a field
        at = unparsed.get("loc", ("body", "?"))[-1]
        reason = (unparsed.get("ctx") or {}).get("error", "invalid JSON")
        return error_response(BadRequest(f"not JSON at character {at}: {reason}", field="body"))
    return JSONResponse(validation_body(errors), status_code=422)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = error_response(http_error(exc))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database failure: 503 while it cannot be reached, 409 for a key that is taken
    (two writers raced), a JSON 500 otherwise."""
    if database_unreachable(exc):
        log.warning("database unreachable on %s %s: %s", request.method, request.url.path, exc)
        return error_response(Unavailable("the database cannot be reached", field="database"))
    if isinstance(exc, IntegrityError):
        return error_response(Conflict("a record with the same key exists", field="id"))
    log.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(TrifectaError("internal error; the server log has the details"))


class LastResort:
    """ASGI middleware: any exception no handler took becomes a logged JSON 500 here, so the
    client gets the project's error body and its keep-alive connection survives (Starlette's
    ServerErrorMiddleware answers plain text, and re-raises, which makes the server drop the
    connection)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise
            log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
            failure = TrifectaError("internal error; the server log has the details")
            await error_response(failure)(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised from `receive` once the body passes the limit: FastAPI's body reader re-raises
    an HTTPException as it is, so the app's handler answers it as JSON."""

    def __init__(self) -> None:
        super().__init__(status_code=413)


class BodySizeLimit:
    """ASGI middleware: 413 for a body above `max_body_bytes`, declared or counted.

    Written here rather than Starlette's `RequestBodyLimitMiddleware` (FastAPI's
    `max_body_size`) because that one answers a declared oversized `Content-Length` with a
    plain-text page, overriding the app's JSON error."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            PayloadTooLarge(f"the request body exceeds {self.max_body_bytes} bytes", field="body")
        )
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body_bytes:
            await too_large(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise _TooLarge()
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:  # raised where no FastAPI handler saw it (a mounted ASGI app)
            if started:
                raise
            await too_large(scope, receive, send)


def install_error_handlers(app: FastAPI, *, max_body_bytes: int | None = None) -> None:
    app.add_exception_handler(TrifectaError, _trifecta_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeout, _database_error)
    if max_body_bytes is not None:
        app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)
    app.add_middleware(LastResort)


def stand_alone(app: FastAPI, *, service: str) -> FastAPI:
    """What a layer's app needs when it is its own server rather than mounted in the front
    door (which already gives every request, mounted apps included, an id and its docs):
    `/docs` and `/redoc` from the package, and one request id and log line per request."""
    from trifecta.core.apidocs import install_api_docs
    from trifecta.core.logging import RequestIds

    install_api_docs(app)
    app.add_middleware(RequestIds, service=service)
    return app
