"""Structured logs (structlog): readable lines on a terminal, JSON lines with
`TRIFECTA_LOG_FORMAT=json` (`log_format` in the settings).

One request id across every hop: `RequestIds`, an ASGI middleware on every server (the front
door and each environment's), takes a well-formed `X-Request-Id` from the caller or assigns
one, keeps it in a context variable for the request's lifetime, answers with it, and logs the
request. Every log line of that request carries `request_id` (a processor adds it), and the
federation's HTTP client forwards it as `X-Request-Id` to the environment servers, which log it
in turn; the edge mesh sends it to a node as the `generate` tool's `request_id` argument
(`edge.mesh`), and the node logs the call under it. Warnings and errors also land in a
bounded ring (`recent_errors`) the operator's dashboard shows.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TextIO

import httpx
import structlog
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-Id"
# Ids a caller may choose: printable, no spaces or separators a log parser could trip on.
WELL_FORMED_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{7,127}$")
ERROR_RING_SIZE = 200
_DETAIL_CHARS = 300

_request_id: ContextVar[str | None] = ContextVar("trifecta_request_id", default=None)
_configured = False


def current_request_id() -> str | None:
    """The id of the request this code runs for (None outside a request)."""
    return _request_id.get()


def accept_request_id(offered: str | None) -> str:
    """The caller's id when it is well formed, else a new one."""
    if offered is not None and WELL_FORMED_ID.match(offered):
        return offered
    return "req-" + uuid.uuid4().hex


async def forward_request_id(request: httpx.Request) -> None:
    """An `httpx.AsyncClient` request hook: the hop carries the id of the request it serves."""
    request_id = current_request_id()
    if request_id is not None:
        request.headers[REQUEST_ID_HEADER] = request_id


@contextmanager
def request_scope(request_id: str) -> Iterator[str]:
    """Run a block as part of request `request_id` (its log lines and outgoing hops carry it)."""
    token = _request_id.set(request_id)
    try:
        yield request_id
    finally:
        _request_id.reset(token)


class LoggedError(BaseModel):
    """One warning or error as the dashboard lists it."""

    at: str
    level: str
    logger: str
    event: str
    request_id: str | None = None
    detail: str = ""


class RecentErrors:
    """The last `size` warnings and errors of this process (bounded: oldest dropped)."""

    def __init__(self, size: int = ERROR_RING_SIZE):
        self._ring: deque[LoggedError] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.total = 0  # every one seen since start, beyond what the ring keeps

    def add(self, error: LoggedError) -> None:
        with self._lock:
            self._ring.append(error)
            self.total += 1

    def latest(self, limit: int = 50) -> list[LoggedError]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._ring))[: max(0, limit)]


recent_errors = RecentErrors()
_RING_LEVELS = {"warning", "error", "critical", "exception"}
_STANDARD_KEYS = {"event", "level", "timestamp", "logger_name", "request_id"}


def _add_request_id(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = _request_id.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _remember_errors(
    _logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if method in _RING_LEVELS:
        detail = " ".join(f"{k}={v}" for k, v in event.items() if k not in _STANDARD_KEYS)
        recent_errors.add(
            LoggedError(
                at=str(event.get("timestamp", "")),
                level="error" if method == "exception" else method,
                logger=str(event.get("logger_name", "")),
                event=str(event.get("event", ""))[:_DETAIL_CHARS],
                request_id=event.get("request_id"),
                detail=detail[:_DETAIL_CHARS],
            )
        )
    return event


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write (a test's capture, a
    redirected stream), not to the one that was current when logging was configured."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _FileAndConsole:
    """A batch command's log (`trifecta run`): every line to its log file, and the warnings and
    errors to the console too, so a report printed on the terminal is not buried under one
    info line per request. structlog calls the method named after the line's level."""

    def __init__(self, file: TextIO, console_level: int):
        self._file = file
        self._console_level = console_level
        self._lock = threading.Lock()

    def _write(self, level: int, line: str) -> None:
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
        if level >= self._console_level:
            sys.stderr.write(line + "\n")

    def debug(self, message: str) -> None:
        self._write(logging.DEBUG, message)

    def info(self, message: str) -> None:
        self._write(logging.INFO, message)

    msg = info

    def warning(self, message: str) -> None:
        self._write(logging.WARNING, message)

    warn = warning

    def error(self, message: str) -> None:
        self._write(logging.ERROR, message)

    exception = error

    def critical(self, message: str) -> None:
        self._write(logging.CRITICAL, message)

    fatal = critical


def log_to_file(path: Path, *, console_level: str = "WARNING") -> None:
    """From now on, this process logs at the settings' level and format into `path` (appended)
    and shows only lines at `console_level` or above on the console."""
    from trifecta.core.settings import get_settings

    settings = get_settings()
    path.parent.mkdir(parents=True, exist_ok=True)
    split = _FileAndConsole(
        path.open("a", encoding="utf-8"), logging.getLevelName(console_level.upper())
    )
    configure_logging(settings.log_level, settings.log_format, logger=split)


def configure_logging(
    level: str = "INFO",
    fmt: str = "console",
    *,
    stream: TextIO | None = None,
    logger: _FileAndConsole | None = None,
) -> None:
    global _configured
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _remember_errors,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=(
            (lambda *_: logger)
            if logger is not None
            else structlog.PrintLoggerFactory(file=stream or _CurrentStderr())  # type: ignore[arg-type]
        ),
        cache_logger_on_first_use=True,
    )
    _configured = True


def _stdlib_logger_name(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    record = event.get("_record")
    if record is not None:
        event.setdefault("logger_name", record.name)
    return event


def uvicorn_log_config(fmt: str) -> dict[str, Any]:
    """The `log_config` for `uvicorn.run`: with `json`, uvicorn's own lines (start-up, errors)
    as JSON objects like every other line, and its access log off (`RequestIds` writes one
    line per request, with its id); uvicorn's default otherwise."""
    from uvicorn.config import LOGGING_CONFIG

    if fmt != "json":
        return LOGGING_CONFIG
    chain = [
        _stdlib_logger_name,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": chain,
        "processors": [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "none": {"class": "logging.NullHandler"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["none"], "level": "INFO", "propagate": False},
        },
    }


def _configure_from_settings() -> None:
    """Level and format from the settings (`TRIFECTA_LOG_LEVEL`, `TRIFECTA_LOG_FORMAT`); the
    defaults when the settings cannot be read (their own error is reported where they are)."""
    from trifecta.core.errors import TrifectaError
    from trifecta.core.settings import Settings

    try:
        settings = Settings()
    except (ValueError, OSError, TrifectaError):
        configure_logging()
        return
    configure_logging(settings.log_level, settings.log_format)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    if not _configured:
        _configure_from_settings()
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name, logger_name=name)
    return logger


def _error_message(body: bytes, content_type: bytes) -> str:
    """The message of a JSON error body (`{"error": {"message": ...}}`), the first bytes of a
    plain-text one; nothing of a page (the dashboard's sign-in form answers 401 too)."""
    if content_type.startswith(b"text/plain"):
        return body[:_DETAIL_CHARS].decode("utf-8", "replace")
    try:
        error = json.loads(body)["error"]
        return str(error.get("message", ""))[:_DETAIL_CHARS]
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


class RequestIds:
    """ASGI middleware: the request's id (accepted or assigned), answered in `X-Request-Id`,
    and one log line per request (`service`, method, path, status, milliseconds): info when
    it succeeded, warning for a 4xx, error for a 5xx."""

    def __init__(self, app: ASGIApp, service: str):
        self.app = app
        self.service = service
        self.log = get_logger("trifecta.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode())
        request_id = accept_request_id(offered.decode("latin-1") if offered else None)
        status = 500
        content_type = b""
        detail: str | None = None
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, content_type, detail
            if message["type"] == "http.response.start":
                status = int(message["status"])
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != REQUEST_ID_HEADER.lower().encode()
                ]
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and status >= 400 and detail is None:
                detail = _error_message(bytes(message.get("body", b"")), content_type)
            await send(message)

        with request_scope(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                detail = f"{type(exc).__name__}: {exc}"[:_DETAIL_CHARS]
                raise
            finally:
                fields = {
                    "service": self.service,
                    "method": scope.get("method", ""),
                    "path": scope.get("path", ""),
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                }
                if status >= 500:
                    self.log.error("request failed", detail=detail, **fields)
                elif status >= 400:
                    self.log.warning("request refused", detail=detail, **fields)
                else:
                    self.log.info("request", **fields)
