"""Command-line options every server command shares, defined once so that each one refuses
bad input alike: one line naming the option, exit code 2 (`trifecta.cli.main`), nothing bound.

A port outside 1-65535 used to reach uvicorn, which bound the number modulo 65536 (99999 ->
34463) without a word; Typer's own range check prints a usage box instead of one line.
"""

from __future__ import annotations

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
