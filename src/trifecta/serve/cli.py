"""`trifecta serve`: every HTTP surface in one process."""

from __future__ import annotations

from pathlib import Path

import typer


def serve_command(
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(8000, min=1, max=65535),
    replicas: int = typer.Option(1, min=1, max=16, help="replicas per cognitive tier"),
    log_level: str = typer.Option("info"),
    federated: bool = typer.Option(
        False,
        "--federated",
        help="serve as the front door of the environments `trifecta up` started",
    ),
) -> None:
    """Serve every HTTP surface in one process (OpenAPI at /docs).

    The OpenAI-compatible API, capsule tasks and feedback, the context service (/context),
    the control plane (/v1/plan, /v1/capsules, /v1/ledger) and Prometheus /metrics.
    """
    import uvicorn

    from trifecta.core.heap import freeze_startup_heap
    from trifecta.core.settings import get_settings
    from trifecta.orchestrator.stack import Stack, build_cognitive
    from trifecta.serve.app import create_app

    settings = get_settings()
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
    app = create_app(stack, own_stack=True)
    freeze_startup_heap()
    uvicorn.run(app, host=host, port=port, log_level=log_level)
