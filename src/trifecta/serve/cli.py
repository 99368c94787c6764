"""`trifecta serve`: every HTTP surface in one process."""

from __future__ import annotations

from pathlib import Path

import typer

from trifecta.core.cli_options import Port


def serve_command(
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: Port = 8000,
    replicas: int = typer.Option(1, min=1, max=16, help="replicas per cognitive tier"),
    log_level: str = typer.Option("info"),
    federated: bool = typer.Option(
        False,
        "--federated",
        help="serve as the front door of the environments `trifecta up` started",
    ),
    insecure_local: bool = typer.Option(
        False,
        "--insecure-local",
        help="serve without API keys (every caller is the admin); loopback only",
    ),
) -> None:
    """Serve every HTTP surface in one process (OpenAPI at /docs).

    The OpenAI-compatible API, capsule tasks and feedback, the context service (/context),
    the control plane (/v1/plan, /v1/capsules, /v1/ledger) and Prometheus /metrics.
    Every route but /healthz and /metrics needs an API key (`Authorization: Bearer`); on
    first start an admin key is written to <data_dir>/admin.key.
    """
    from trifecta.core.heap import (
        bound_native_caches,
        cap_malloc_arenas,
        freeze_startup_heap,
        start_malloc_trimmer,
    )
    from trifecta.core.heap_report import start_heap_report_if_asked

    cap_malloc_arenas()  # before any thread allocates: bounds the heap's growth per request
    bound_native_caches()  # before torch's first kernel: oneDNN and MKL read them once
    import uvicorn

    from trifecta.core.auth import Authenticator
    from trifecta.core.settings import get_settings
    from trifecta.orchestrator.stack import Stack, build_cognitive
    from trifecta.serve.app import create_app
    from trifecta.serve.auth import ensure_local_admin_key, loopback_only, server_authenticator

    settings = get_settings()
    auth: Authenticator
    if insecure_local:
        auth = loopback_only(host)  # refuses a non-loopback host with exit 2
        typer.secho(
            f"WARNING: --insecure-local: NO AUTHENTICATION on {host}:{port}; every local "
            "process and user is the admin of every capsule",
            fg=typer.colors.RED,
            bold=True,
            err=True,
        )
    else:
        from trifecta.core.db import get_engine

        keys = server_authenticator(get_engine(settings.db_url))
        key_file = ensure_local_admin_key(keys, settings.data_dir)
        where = f"in {key_file}" if key_file else "made with `trifecta keys create --admin`"
        typer.echo(f"API keys required; the admin key is {where}", err=True)
        auth = keys
    remote = None
    if federated:
        from trifecta.federation.processes import load_federation
        from trifecta.fleet.topology import load_topology

        federation = load_federation(settings)
        topology = Path(federation.topology) if federation.topology else settings.topology
        remote = federation.bridge(load_topology(topology))
    stack = Stack(
        settings=settings,
        cognitive=build_cognitive(settings, settings.phase, replicas),
        remote=remote,
    )
    stack.warm_up()
    app = create_app(stack, own_stack=True, auth=auth)
    freeze_startup_heap()
    start_malloc_trimmer()  # glibc's freed pages back to the kernel while serving
    start_heap_report_if_asked()  # a debug aid, off unless TRIFECTA_HEAP_REPORT names a file
    from trifecta.core.logging import uvicorn_log_config

    log_config = uvicorn_log_config(settings.log_format)  # JSON lines throughout with json
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=log_config)
