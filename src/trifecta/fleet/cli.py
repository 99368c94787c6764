"""Commands of the control plane: `trifecta capsule ...`, `trifecta fleet ...`, `trifecta plan`,
`trifecta size`.

Bad input raises (`InvalidInput`, pydantic `ValidationError`); `trifecta.cli.main` turns it into
one line on stderr and exit code 2. The planner (scipy) is imported inside the command body so
that `trifecta --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from trifecta.core.errors import InvalidInput
from trifecta.core.settings import PHASES, Phase, get_settings
from trifecta.fleet.assets import invalid_from
from trifecta.fleet.capsules import Capsule

# Piped output (files, CI logs) gets wide tables instead of Rich's 80-column default.
console = Console() if sys.stdout.isatty() else Console(width=160)

capsule_app = typer.Typer(
    help="Add, list, show and remove capsules (tenants) in the registry.", no_args_is_help=True
)
fleet_app = typer.Typer(
    help="Fleet files: generate synthetic fleets, import, export, summarise.", no_args_is_help=True
)

PhaseOption = Annotated[
    str | None, typer.Option("--phase", help="dev | pilot | full (default: the configured phase)")
]


def _phase(value: str | None) -> Phase:
    if value is None:
        return get_settings().phase
    if value not in PHASES:
        raise InvalidInput(f"unknown phase {value!r}", field="phase", allowed=PHASES)
    return value


def _registry() -> Any:
    from trifecta.fleet.registry import CapsuleRegistry

    return CapsuleRegistry()


# ---------------------------------------------------------------- capsule


@capsule_app.command("add")
def capsule_add(
    capsule_id: Annotated[str | None, typer.Option("--id", help="slug: a-z, 0-9, _ and -")] = None,
    name: Annotated[str | None, typer.Option(help="display name (default: the id)")] = None,
    kind: Annotated[str, typer.Option(help="digital_twin, sovereign, or a kind of your own")] = (
        "digital_twin"
    ),
    domain: Annotated[str, typer.Option(help="context shard key")] = "general",
    jurisdiction: Annotated[
        str | None, typer.Option(help="required for sovereign capsules")
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="allowed environment name or kind (repeatable)"),
    ] = None,
    phase: PhaseOption = None,
    rps: Annotated[float, typer.Option("--rps", help="mean requests per second")] = 1.0,
    tokens: Annotated[int, typer.Option("--tokens", help="prompt + completion tokens")] = 256,
    light_share: Annotated[float, typer.Option(help="share of requests the edge may serve")] = 0.5,
    generative_share: Annotated[
        float, typer.Option(help="share of requests for the generative layer")
    ] = 0.0,
    quality: Annotated[float, typer.Option("--quality", help="target answer accuracy")] = 0.9,
    from_file: Annotated[
        Path | None,
        typer.Option("--file", help="add every capsule of a fleet YAML/JSON file instead"),
    ] = None,
    replace: Annotated[bool, typer.Option(help="overwrite capsules with the same id")] = False,
) -> None:
    """Add one capsule from options, or every capsule of a fleet file."""
    registry = _registry()
    if from_file is not None:
        from trifecta.fleet.fleetfile import load_fleet

        count = registry.add_many(load_fleet(from_file), replace=replace)
        console.print(f"added {count} capsules from {from_file}")
        return
    if capsule_id is None:
        raise InvalidInput("give --id (or --file)", field="id")
    try:
        capsule = Capsule.model_validate(
            {
                "id": capsule_id,
                "name": name or capsule_id,
                "kind": kind,
                "domain": domain,
                "jurisdiction": jurisdiction,
                "allowed_environments": allow or None,
                "phase": _phase(phase),
                "quality_target": quality,
                "demand": {
                    "requests_per_s": rps,
                    "tokens_per_request": tokens,
                    "light_share": light_share,
                    "generative_share": generative_share,
                },
            }
        )
    except ValidationError as exc:
        raise invalid_from(exc, prefix="") from None
    registry.add(capsule, replace=replace)
    console.print(f"added capsule [bold]{capsule.id}[/] ({capsule.kind}, {capsule.domain})")


@capsule_app.command("list")
def capsule_list(
    kind: Annotated[str | None, typer.Option(help="only this kind")] = None,
    domain: Annotated[str | None, typer.Option(help="only this domain")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the capsules in the registry."""
    from trifecta.fleet.render import capsule_table

    capsules = _registry().list(kind=kind, domain=domain)
    if as_json:
        typer.echo(json.dumps([c.model_dump(mode="json") for c in capsules], indent=2))
        return
    console.print(capsule_table(capsules))


@capsule_app.command("show")
def capsule_show(capsule_id: Annotated[str, typer.Argument(help="capsule id")]) -> None:
    """Print one capsule as YAML."""
    import yaml

    capsule = _registry().get(capsule_id)
    typer.echo(yaml.safe_dump(capsule.model_dump(mode="json"), sort_keys=False).rstrip())


@capsule_app.command("remove")
def capsule_remove(capsule_id: Annotated[str, typer.Argument(help="capsule id")]) -> None:
    """Remove one capsule from the registry."""
    _registry().remove(capsule_id)
    console.print(f"removed capsule [bold]{capsule_id}[/]")


@capsule_app.command("resolve")
def capsule_resolve(
    uri: Annotated[str, typer.Argument(help="capsule://authority/domain/operation[/version]")],
    peers: Annotated[
        list[str] | None,
        typer.Option("--peer", help="a peer's base URL whose agent card to read (repeatable)"),
    ] = None,
    topology: Annotated[
        Path | None,
        typer.Option(
            help="topology whose environments are local authorities (default: the configured)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Resolve a capsule URI: the local registry first (authority `local` or an environment of
    the topology), then the peers' agent cards (`--peer` and the topology's environment URLs)."""
    from trifecta.fleet.capsule_uri import CapsuleResolver, CardCatalog, parse_capsule_uri
    from trifecta.fleet.topology import load_topology

    parsed = parse_capsule_uri(uri)  # a bad URI fails before any registry or network access
    environments = load_topology(topology or get_settings().topology).environments
    local = {"local": None, "localhost": None, **{e.name: e for e in environments}}
    seeds = [*(peers or []), *(e.url for e in environments if e.url)]
    credential = get_settings().federation_credential  # peers list their capsules to peers only
    catalog = (
        CardCatalog(seeds, credential=credential)
        if seeds and parsed.authority not in local
        else None
    )
    resolution = CapsuleResolver(_registry(), catalog, local=local).resolve(parsed)
    if as_json:
        typer.echo(resolution.model_dump_json(indent=2))
        return
    where = (
        "this registry" if resolution.where == "local" else f"{resolution.peer} ({resolution.url})"
    )
    manifest = resolution.manifest
    console.print(
        f"[bold]{resolution.uri}[/] -> capsule [bold]{resolution.capsule_id}[/] "
        f"({manifest.kind}, {manifest.domain}, v{manifest.version.removeprefix('v')}) at {where}"
    )
    if resolution.alternatives:
        console.print(f"also offered by: {', '.join(resolution.alternatives)}")


@capsule_app.command("manifest")
def capsule_manifest(
    capsule_id: Annotated[str | None, typer.Argument(help="a registry capsule's id")] = None,
    check: Annotated[
        Path | None, typer.Option("--check", help="validate a manifest file (YAML or JSON) instead")
    ] = None,
) -> None:
    """Print a capsule's manifest (name, version, domain, jurisdiction, allowed places,
    operations), or validate a manifest file."""
    import yaml

    from trifecta.fleet.manifest import load_manifest, manifest_of

    if (capsule_id is None) == (check is None):
        raise InvalidInput("give a capsule id or --check FILE", field="capsule_id")
    manifest = (
        load_manifest(check) if check is not None else manifest_of(_registry().get(capsule_id))
    )
    typer.echo(yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False).rstrip())


# ---------------------------------------------------------------- fleet


@fleet_app.command("generate")
def fleet_generate(
    capsules: Annotated[int, typer.Option("--capsules", help="how many capsules")] = 100,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same fleet)")] = 0,
    phase: PhaseOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="write here (.yaml or .json); default: print YAML")
    ] = None,
    demand: Annotated[
        str,
        typer.Option(help="catalogue (a few plans) | continuous (each capsule's own demand)"),
    ] = "catalogue",
) -> None:
    """Write a realistic synthetic fleet (digital twins and sovereign capsules)."""
    from trifecta.fleet.fleetfile import DEMAND_MIXES, dump_fleet, fleet_yaml, generate_fleet

    if capsules < 1:
        raise InvalidInput("must be at least 1", field="capsules")
    if demand not in DEMAND_MIXES:
        raise InvalidInput(f"unknown demand mix {demand!r}", field="demand", allowed=DEMAND_MIXES)
    fleet = generate_fleet(capsules, seed=seed, phase=_phase(phase), demand=demand)
    if out is None:
        typer.echo(fleet_yaml(fleet).rstrip())
        return
    dump_fleet(fleet, out)
    console.print(f"wrote {len(fleet)} capsules to {out}")


@fleet_app.command("show")
def fleet_show(
    fleet: Annotated[
        Path | None, typer.Option(help="fleet file (default: the shipped one)")
    ] = None,
) -> None:
    """Summarise a fleet file: capsules per kind, domain and jurisdiction, total demand."""
    from trifecta.fleet.fleetfile import load_fleet
    from trifecta.fleet.render import fleet_summary

    console.print(fleet_summary(load_fleet(fleet or get_settings().fleet)))


@fleet_app.command("import")
def fleet_import(
    path: Annotated[Path, typer.Argument(help="fleet file (.yaml or .json)")],
    replace: Annotated[bool, typer.Option(help="overwrite capsules with the same id")] = False,
) -> None:
    """Add every capsule of a fleet file to the registry (one transaction)."""
    from trifecta.fleet.fleetfile import load_fleet

    count = _registry().add_many(load_fleet(path), replace=replace)
    console.print(f"imported {count} capsules")


@fleet_app.command("export")
def fleet_export(path: Annotated[Path, typer.Argument(help="fleet file to write")]) -> None:
    """Write the registry's capsules to a fleet file."""
    from trifecta.fleet.fleetfile import dump_fleet

    capsules = _registry().list()
    dump_fleet(capsules, path)
    console.print(f"exported {len(capsules)} capsules to {path}")


# ---------------------------------------------------------------- plan and size


def plan_command(
    fleet: Annotated[
        Path | None, typer.Option(help="fleet file (default: the configured or shipped fleet)")
    ] = None,
    registry: Annotated[
        bool, typer.Option("--registry", help="plan the capsules in the registry instead of a file")
    ] = False,
    topology: Annotated[
        Path | None,
        typer.Option(help="topology file (default: the configured or shipped topology)"),
    ] = None,
    phase: PhaseOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="write the plan (.json or .yaml)")
    ] = None,
    capsules_shown: Annotated[
        int, typer.Option("--show-capsules", help="capsule rows to print")
    ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
    time_limit: Annotated[
        float,
        typer.Option(
            help="seconds the solvers may take after the greedy baselines; then the best plan"
        ),
    ] = 5.0,
    gap: Annotated[
        float,
        typer.Option(help="stop at a plan proven within this fraction of the optimum (0: exact)"),
    ] = 1e-3,
) -> None:
    """Plan the fleet at the lowest cost per hour (environments, tiers, accelerators, replicas)."""
    from trifecta.fleet.fleetfile import load_fleet
    from trifecta.fleet.planner import plan
    from trifecta.fleet.render import print_plan
    from trifecta.fleet.topology import load_topology

    settings = get_settings()
    if registry and fleet is not None:
        raise InvalidInput("give either --fleet or --registry", field="fleet")
    if time_limit <= 0:
        raise InvalidInput("must be positive", field="time_limit")
    if not 0 <= gap < 1:
        raise InvalidInput("must be in [0, 1)", field="gap")
    capsules = _registry().list() if registry else load_fleet(fleet or settings.fleet)
    result = plan(
        capsules,
        load_topology(topology or settings.topology),
        _phase(phase),
        time_limit=time_limit,
        mip_rel_gap=gap,
    )
    if out is not None:
        result.write(out)
    if as_json:
        typer.echo(result.to_json())
        return
    print_plan(console, result, capsules_shown=capsules_shown)
    if out is not None:
        console.print(f"plan written to {out}")


def size_command(
    preset: Annotated[
        str | None,
        typer.Option(help="userlm-8b | userlm-13b | userlm-70b | rnd1-30b-a3b | bitnet-2b4t"),
    ] = None,
    params: Annotated[float | None, typer.Option(help="parameters, e.g. 70e9")] = None,
    bits: Annotated[float | None, typer.Option(help="bits per weight, e.g. 16, 8, 4")] = None,
    active_params: Annotated[
        float | None, typer.Option(help="parameters active per token (MoE)")
    ] = None,
    layers: Annotated[int | None, typer.Option(help="transformer layers")] = None,
    kv_heads: Annotated[int | None, typer.Option(help="key/value heads")] = None,
    head_dim: Annotated[int | None, typer.Option(help="head dimension")] = None,
    kv_bits: Annotated[float | None, typer.Option(help="bits per KV-cache element")] = None,
    context: Annotated[int | None, typer.Option(help="tokens of context per sequence")] = None,
    batch: Annotated[int, typer.Option(help="concurrent sequences")] = 1,
    accelerator: Annotated[
        list[str] | None, typer.Option(help="only these accelerators (repeatable)")
    ] = None,
    phase: PhaseOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Memory, tensor-parallel degree, decode roofline and cost per million tokens across tiers."""
    from trifecta.fleet.accelerators import get_accelerator
    from trifecta.fleet.render import sizing_table
    from trifecta.fleet.sizing import custom_spec, size_model

    spec, note = custom_spec(
        preset=preset,
        params=params,
        bits=bits,
        active_params=active_params,
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        kv_bits=kv_bits,
    )
    if batch < 1:
        raise InvalidInput("must be at least 1", field="batch")
    if context is not None and context < 1:
        raise InvalidInput("must be at least 1", field="context")
    from trifecta.fleet.accelerators import ACCELERATORS

    names = accelerator or list(ACCELERATORS)
    the_phase = _phase(phase)
    rows = [
        size_model(spec, get_accelerator(n), phase=the_phase, batch=batch, context=context)
        for n in names
    ]
    if as_json:  # pydantic writes infinite costs (models that do not fit) as null
        from pydantic import TypeAdapter

        from trifecta.fleet.sizing import Sizing

        typer.echo(TypeAdapter(list[Sizing]).dump_json(rows, indent=2).decode())
        return
    if note:
        console.print(f"[dim]{note}[/]")
    console.print(sizing_table(spec, rows, the_phase))
