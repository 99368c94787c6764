"""The errors every part raises, each knowing its HTTP status and its one-line CLI form.

Bad input names the field and, where it is a choice, the allowed values. HTTP handlers turn
these into 4xx JSON bodies (`core.http`), the CLI into one line on stderr and exit code 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


# A message quotes what the caller sent; a 60 KB path id is not worth echoing back whole.
MAX_MESSAGE_CHARS = 500


class TrifectaError(Exception):
    """Base of every expected failure. `status` is the HTTP status it maps to."""

    status: int = 500
    code: str = "internal_error"

    def __init__(
        self, message: str, *, field: str | None = None, allowed: Iterable[Any] | None = None
    ):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        self.message = message
        self.field = field
        self.allowed = sorted({str(a) for a in allowed}) if allowed is not None else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.field}: {self.message}" if self.field else self.message
        if self.allowed is not None:
            text += f" (allowed: {', '.join(self.allowed)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.one_line()}
        if self.field:
            body["field"] = self.field
        if self.allowed is not None:
            body["allowed"] = self.allowed
        return body


class InvalidInput(TrifectaError):
    """The caller sent something malformed or out of range."""

    status = 422
    code = "invalid_input"


class BadRequest(InvalidInput):
    """A request that cannot be read at all (a body that is not JSON, not UTF-8, too deep)."""

    status = 400
    code = "bad_request"


class NotFound(TrifectaError):
    status = 404
    code = "not_found"


class Conflict(TrifectaError):
    status = 409
    code = "conflict"


class Forbidden(TrifectaError):
    """A capsule asked for something outside its tenancy (another domain, a disallowed
    environment)."""

    status = 403
    code = "forbidden"


class SovereigntyViolation(Forbidden):
    code = "sovereignty_violation"


class Unauthenticated(TrifectaError):
    """No credential, or one that is not valid (revoked, unknown)."""

    status = 401
    code = "unauthenticated"


class Infeasible(TrifectaError):
    """A plan or placement cannot satisfy its constraints; the message says which."""

    status = 422
    code = "infeasible"


class QuotaExceeded(TrifectaError):
    status = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: float, field: str | None = None):
        self.retry_after = retry_after
        super().__init__(message, field=field)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "retry_after": self.retry_after}


class Unavailable(TrifectaError):
    """A dependency (node, environment, server) is down and no allowed fallback exists."""

    status = 503
    code = "unavailable"


class PayloadTooLarge(InvalidInput):
    status = 413
    code = "payload_too_large"


def field_path(loc: Iterable[Any]) -> str:
    """Pydantic error location -> field name: `("body", "ops", 0, "content")` ->
    `ops[0].content`, `("body", 0, "share")` -> `[0].share` (the request part, body /
    query / path, is dropped)."""
    parts: list[str] = []
    for part in loc:
        if part in ("body", "query", "path") and not parts:
            continue
        if isinstance(part, int):
            if parts:
                parts[-1] += f"[{part}]"
            else:  # an item of a body that is a list: `[0].share`
                parts.append(f"[{part}]")
        else:
            parts.append(str(part))
    return ".".join(parts)


def invalid_input_from(exc: ValidationError, *, prefix: str = "") -> InvalidInput:
    """The first pydantic error as `InvalidInput` whose field is `prefix.path[3].to.field`.
    Model-wide validators name their field at the start of the message ("jurisdiction: ..."),
    which is kept as the field."""
    first = exc.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    field = field_path([prefix, *first["loc"]] if prefix else first["loc"])
    if ": " in message and message.split(": ", 1)[0].isidentifier():
        inner, message = message.split(": ", 1)
        field = f"{field}.{inner}" if field else inner
    return InvalidInput(message, field=field or None)
