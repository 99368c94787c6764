"""`trifecta env serve`, `trifecta up`, `trifecta down`, `trifecta status`: environments as
processes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from trifecta.core.cli_options import Port

console = Console()
env_app = typer.Typer(
    help="One environment of the topology as its own server.", no_args_is_help=True
)


@env_app.command("serve")
def env_serve_command(
    env: str = typer.Option(..., "--env", help="the environment of the topology to serve"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: Port = 8100,
    topology: Path | None = typer.Option(None, help="topology YAML (default: the shipped one)"),
    edge_nodes: int = typer.Option(1, min=1, max=16, help="in-process nodes of an edge site"),
    peer: list[str] = typer.Option(
        [], "--peer", help="a peer environment's URL to discover (default: the topology's URLs)"
    ),
    log_level: str = typer.Option("warning"),
) -> None:
    """Serve one environment: the services the topology places there, its A2A agent card
    (/.well-known/agent-card.json) and the typed federation hops (/federation/v1)."""
    import uvicorn

    from trifecta.core.heap import freeze_startup_heap
    from trifecta.core.settings import get_settings
    from trifecta.fleet.topology import load_topology
    from trifecta.serve.environment import EnvironmentSite, create_environment_app

    settings = get_settings()
    topo = load_topology(topology or settings.topology)
    site = EnvironmentSite(topo, env, settings, edge_nodes=edge_nodes)
    site.warm_up()
    url = f"http://{host}:{port}"
    seeds = peer or [e.url for e in topo.environments if e.url and e.name != env]
    app = create_environment_app(
        site, base_url=url, credential=settings.federation_credential, peers=seeds
    )
    freeze_startup_heap()
    console.print(f"environment {env!r} serving at {url}", style="bold")
    from trifecta.core.logging import uvicorn_log_config

    log_config = uvicorn_log_config(settings.log_format)  # JSON lines throughout with json
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=log_config)


def up_command(
    topology: Path | None = typer.Option(None, help="topology YAML (default: the shipped one)"),
    host: str = typer.Option("127.0.0.1", help="address every environment listens on"),
    env: list[str] = typer.Option([], "--env", help="start only these environments"),
) -> None:
    """Start every serving environment of the topology as its own process on loopback."""
    from trifecta.core.settings import get_settings
    from trifecta.federation.processes import seed_registry, up
    from trifecta.fleet.topology import load_topology

    settings = get_settings()
    topo = load_topology(topology or settings.topology)
    seed_registry(settings)
    with console.status("starting environments (each loads its models)") as shown:
        federation = up(
            settings,
            topo,
            topology_file=topology,
            host=host,
            only=env or None,
            on_started=lambda name: shown.update(f"{name} is up; waiting for the others"),
        )
    for running in federation.environments:
        console.print(f"[green]up[/green] {running.name:<14} {running.url}  (log: {running.log})")
    console.print("front door: `trifecta serve --federated`; stop with `trifecta down`")


def down_command() -> None:
    """Stop the environments `trifecta up` started."""
    from trifecta.core.settings import get_settings
    from trifecta.federation.processes import down

    stopped = down(get_settings())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def status_command() -> None:
    """Each environment's health: what it hosts, what it served and refused."""
    from trifecta.core.settings import get_settings
    from trifecta.federation.processes import load_federation, status
    from trifecta.fleet.topology import load_topology

    settings = get_settings()
    federation = load_federation(settings)
    topo = load_topology(Path(federation.topology) if federation.topology else settings.topology)
    table = Table(title="Environments")
    columns = ("environment", "state", "services", "served", "refused", "edge nodes")
    for col in (*columns, "peers up (A2A)"):
        table.add_column(col)
    down = 0
    for row in status(federation, topo):
        h = row.health
        if h is None and row.starting:
            table.add_row(row.name, "[yellow]starting[/yellow]", "", "", "", "", "")
        elif h is None:
            down += 1
            table.add_row(row.name, f"[red]down[/red] {row.why}", "", "", "", "", "")
        else:
            table.add_row(
                row.name,
                "[green]up[/green]",
                ", ".join(h.services),
                str(h.served),
                str(h.refused),
                str(h.edge_nodes),
                ", ".join(row.peers_up) or "-",
            )
    console.print(table)
    if down:
        raise typer.Exit(1)
