"""`trifecta cognitive serve`: the OpenAI-compatible server over the tiers.

Heavy libraries (torch, transformers, ray, uvicorn) load inside the command, so that
`trifecta --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict, Field, field_validator

from trifecta.core.cli_options import Port
from trifecta.core.errors import InvalidInput


class ServeOptions(BaseModel):
    """The command's input, validated (each error names its option)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    tiers: list[str]
    replicas: int = Field(ge=1, le=64)
    max_batch: int = Field(ge=1, le=256)
    ray_address: str | None
    min_replicas: int = Field(ge=1)
    max_replicas: int = Field(ge=1)
    dummy_weights: bool
    require_capsule: bool
    torch_threads: int = Field(ge=1)

    @field_validator("tiers")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from trifecta.cognitive.tiers import TIER_NAMES

        for tier in value:
            if tier not in TIER_NAMES:
                raise InvalidInput(f"unknown tier {tier!r}", field="tier", allowed=TIER_NAMES)
        return value or list(TIER_NAMES)


def serve_command(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Port = 8000,
    tier: Annotated[
        list[str] | None, typer.Option(help="tier to serve (repeat); default: all")
    ] = None,
    replicas: Annotated[int, typer.Option(help="in-process replicas per tier")] = 1,
    max_batch: Annotated[int, typer.Option(help="sequences a replica decodes at once")] = 16,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="serve the tiers on this Ray cluster ('local': start one here); "
            "default: the ray_address setting, else in-process"
        ),
    ] = None,
    min_replicas: Annotated[int, typer.Option(help="Ray: fewest replicas per tier")] = 1,
    max_replicas: Annotated[
        int, typer.Option(help="Ray: most replicas per tier (autoscaling)")
    ] = 2,
    dummy_weights: Annotated[
        bool,
        typer.Option(
            help="random weights of each tier's architecture (load testing without trained weights)"
        ),
    ] = False,
    require_capsule: Annotated[
        bool, typer.Option(help="refuse keys without a capsule (the admin key)")
    ] = False,
    torch_threads: Annotated[int, typer.Option(help="torch intra-op threads per process")] = 1,
) -> None:
    """Serve the tiers over an OpenAI-compatible API (/v1/models, /v1/completions,
    /v1/chat/completions), with per-capsule fair queuing and continuous batching."""
    from trifecta.core.settings import get_settings

    options = ServeOptions(
        host=host,
        port=port,
        tiers=list(tier or []),
        replicas=replicas,
        max_batch=max_batch,
        ray_address=ray_address or get_settings().ray_address,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        dummy_weights=dummy_weights,
        require_capsule=require_capsule,
        torch_threads=torch_threads,
    )
    if options.min_replicas > options.max_replicas:
        raise InvalidInput("must not exceed --max-replicas", field="min_replicas")
    run_server(options)


def run_server(options: ServeOptions) -> None:
    import uvicorn
    from rich.console import Console

    from trifecta.cognitive.serving.app import create_app
    from trifecta.cognitive.serving.factory import build_service, connect_ray
    from trifecta.core.heap import bound_native_caches, freeze_startup_heap

    bound_native_caches()  # before the tiers' first kernel (core/heap.py says why)
    console = Console(stderr=True)
    ray_options = None
    if options.ray_address:
        from trifecta.cognitive.serving.ray_deployment import RayTierOptions

        with console.status(f"connecting to Ray at {options.ray_address}"):
            connect_ray(options.ray_address)
        ray_options = RayTierOptions(
            min_replicas=options.min_replicas,
            max_replicas=options.max_replicas,
            max_batch=options.max_batch,
            torch_threads=options.torch_threads,
        )
    with console.status(f"loading tiers {', '.join(options.tiers)}"):
        service = build_service(
            options.tiers,
            replicas=options.replicas,
            max_batch=options.max_batch,
            require_capsule=options.require_capsule,
            torch_threads=options.torch_threads,
            dummy_weights=options.dummy_weights,
            ray=ray_options,
        )
    where = (
        f"on Ray ({options.ray_address})"
        if options.ray_address
        else f"{options.replicas} replica(s) each"
    )
    console.print(
        f"serving {', '.join(service.model_names())} {where} at "
        f"http://{options.host}:{options.port}/v1"
    )
    # First start: an admin key in the data directory, as `trifecta serve` writes one.
    from trifecta.core.db import get_engine
    from trifecta.core.http import stand_alone
    from trifecta.core.settings import get_settings
    from trifecta.fleet.admin_key import admin_key_notice, ensure_local_admin_key
    from trifecta.fleet.keys import KeyStore

    settings = get_settings()
    keys = KeyStore(get_engine(settings.db_url))
    typer.echo(admin_key_notice(ensure_local_admin_key(keys, settings.data_dir)), err=True)
    app = stand_alone(create_app(service, auth=keys), service="cognitive")
    freeze_startup_heap()
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning")


if __name__ == "__main__":  # `python -m trifecta.cognitive.serving.cli`, e.g. inside a namespace
    typer.run(serve_command)
