"""Command-line options every server command shares, defined once so that each one refuses
bad input alike: one line naming the option, exit code 2 (`trifecta.cli.main`), nothing bound.

An unreachable database is one line too (`unreachable_database`, used by `trifecta.cli.main`).
A port outside 1-65535 used to reach uvicorn, which bound the number modulo 65536 (99999 ->
34463) without a word; Typer's own range check prints a usage box instead of one line.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from trifecta.core.errors import InvalidInput

MIN_PORT, MAX_PORT = 1, 65535


def tcp_port(value: int) -> int:
    """The Typer callback of `--port`: a TCP port a server can listen on, else `InvalidInput`."""
    if not MIN_PORT <= value <= MAX_PORT:
        raise InvalidInput(f"{value} is not a TCP port ({MIN_PORT}-{MAX_PORT})", field="port")
    return value


Port = Annotated[
    int, typer.Option("--port", callback=tcp_port, help=f"TCP port ({MIN_PORT}-{MAX_PORT})")
]


# How drivers say a database did not answer (psycopg, SQLite): a setting or URL to fix, not a
# bug, so one line instead of SQLAlchemy's 60-150 line traceback.
_UNREACHABLE = (
    "connection failed",
    "connection to server",
    "could not connect",
    "could not translate host name",
    "password authentication failed",
    "unable to open database file",
)


def unreachable_database(exc: BaseException) -> InvalidInput | None:
    """A database that did not answer a connection (SQLAlchemy's `OperationalError`) as one
    line naming `database_url`; None for any other failure (SQLAlchemy is looked up only if
    loaded, so this costs `trifecta --help` nothing)."""
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is None or not isinstance(exc, sqlalchemy_exc.OperationalError):
        return None
    lines = str(exc.orig or exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    if not any(marker in reason.lower() for marker in _UNREACHABLE):
        return None
    return InvalidInput(f"the database did not answer: {reason}", field="database_url")
