"""Errors in the OpenAI API's shape: `{"error": {"message", "type", "param", "code"}}`.

The routes of the OpenAI-compatible API answer every expected failure this way, whatever app
they are mounted in: bad input is 400 `invalid_request_error` naming the parameter, an unknown
model 404 `model_not_found`, an unknown capsule 404, a capsule over its quota 429 with
Retry-After. `OpenAIRoute` catches them inside the route itself, so the main server's own
error handlers (which answer in the project's `{"error": {"code", "field"}}` shape) never see
them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from trifecta.core.errors import QuotaExceeded, TrifectaError, field_path

_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "api_error"),
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def from_trifecta_error(exc: TrifectaError) -> JSONResponse:
    # The OpenAI API answers malformed or out-of-range input with 400, not 422.
    status = 400 if exc.status == 422 else exc.status
    code = exc.code
    if exc.status == 404 and exc.field == "model":
        code = "model_not_found"
    headers = None
    if isinstance(exc, QuotaExceeded):
        code = "rate_limit_exceeded"
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return openai_error(status, exc.one_line(), param=exc.field, code=code, headers=headers)


def from_validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first: dict[str, Any] = errors[0] if errors else {}
    param = field_path(first.get("loc", ())) or None
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        param, message = None, "the request body is not valid JSON"
    elif first.get("type") == "extra_forbidden":
        message = "unrecognized request argument"
    return openai_error(
        400, f"{param}: {message}" if param else message, param=param, code="invalid_value"
    )


class OpenAIRoute(APIRoute):
    """A route whose expected failures come back as OpenAI-style errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except TrifectaError as exc:
                return from_trifecta_error(exc)
            except RequestValidationError as exc:
                return from_validation_error(exc)

        return route
