"""`trifecta context ...`: serve the ReasoningBank service, read and change playbooks and
memories, learn from trajectories, migrate databases and move shards.

Bad input raises (`InvalidInput`, pydantic `ValidationError`) and `trifecta.cli.main` prints
one line and exits 2. The layer's modules (SQLAlchemy, numpy, usearch, the embedder) are
imported inside the command bodies so that `trifecta --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from trifecta.core.cli_options import Port
from trifecta.core.errors import InvalidInput
from trifecta.core.wiring import Wiring

if TYPE_CHECKING:
    from pydantic import BaseModel

    from trifecta.context.copier import ProgressCallback
    from trifecta.context.facade import ContextService

console = Console()
context_app = typer.Typer(
    help="ACE playbooks and ReasoningBank memories: serve, read, learn, migrate, shard.",
    no_args_is_help=True,
)
shard_app = typer.Typer(help="Shard map: list, move a domain online, share.", no_args_is_help=True)
memory_app = typer.Typer(help="ReasoningBank memories: add and search.", no_args_is_help=True)
context_app.add_typer(shard_app, name="shard")
context_app.add_typer(memory_app, name="memory")

JsonFlag = Annotated[bool, typer.Option("--json", help="print the full result as JSON")]
DomainOption = Annotated[str | None, typer.Option(help="read a domain shared with the capsule")]


def _service(
    ctx: typer.Context, *, with_model: bool = False, cache: bool | None = None
) -> ContextService:
    """The facade with the composition root's parts: the embedder loads on first use, and
    the language model is asked for only by the commands whose roles write text."""
    from trifecta.context.facade import ContextService

    wiring = Wiring.of(ctx)
    model = wiring.language_model() if with_model else None
    return ContextService(language_model=model, embedder=wiring.embedder, cache=cache)


def _read_json(path: Path, field: str) -> str:
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}", field=field)
    return path.read_text()


def _emit(result: BaseModel, as_json: bool, summary: str) -> None:
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        typer.echo(summary)  # plain: no markup parsing of [bullet-ids], no wrapping of URLs


def _progress_bar() -> tuple[Any, ProgressCallback]:
    """A rich progress bar and the callback the copier reports rows to."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    tasks: dict[tuple[str, str, str], Any] = {}

    def report(domain: str, table: str, rows: int, phase: str) -> None:
        key = (domain, table, phase)
        if key not in tasks:
            tasks[key] = progress.add_task(f"{phase} {domain}/{table}", total=None)
        progress.update(tasks[key], completed=rows)

    return progress, report


@context_app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Port = 8300,
    cache: Annotated[bool, typer.Option(help="views and result cache (+ Redis)")] = True,
) -> None:
    """Run the ReasoningBank FastAPI service (OpenAPI at /docs)."""
    import uvicorn

    from trifecta.context.service import create_app
    from trifecta.core.heap import freeze_startup_heap
    from trifecta.core.http import stand_alone
    from trifecta.core.settings import get_settings
    from trifecta.fleet.admin_key import admin_key_notice, ensure_local_admin_key
    from trifecta.fleet.keys import KeyStore

    service = _service(ctx, with_model=True, cache=cache)
    # First start: an admin key in the data directory, as `trifecta serve` writes one.
    keys = KeyStore(service.registry.engine)
    typer.echo(admin_key_notice(ensure_local_admin_key(keys, get_settings().data_dir)), err=True)
    service.warm_up()
    app = stand_alone(create_app(service, auth=keys), service="context")
    # The model, torch and the app live as long as the process: keep full collections from
    # walking them on the request path (as `trifecta serve` does).
    freeze_startup_heap()
    uvicorn.run(app, host=host, port=port, log_level="warning")


@context_app.command("playbook")
def playbook(
    ctx: typer.Context,
    capsule_id: Annotated[str, typer.Argument(help="the reading capsule")],
    domain: DomainOption = None,
    render: Annotated[bool, typer.Option(help="print the playbook as prompt text")] = False,
    budget: Annotated[int | None, typer.Option(help="token budget when rendering")] = None,
    query: Annotated[str | None, typer.Option(help="rank bullets by relevance to this")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show a capsule's playbook (bullets with counters), or render it within a budget."""
    from trifecta.context.models import RenderRequest

    service = _service(ctx)
    if render:
        rendered = service.render(
            capsule_id, RenderRequest(token_budget=budget, query=query, domain=domain)
        )
        _emit(rendered, as_json, rendered.prompt or "(empty playbook)")
        return
    view = service.playbook(capsule_id, domain)
    if as_json:
        typer.echo(view.model_dump_json(indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(
        title=f"playbook of {view.domain} (version {view.version}, {view.total_tokens} tokens)"
    )
    for column in ("id", "section", "helpful", "harmful", "content"):
        table.add_column(column)
    for b in view.bullets:
        table.add_row(b.id, b.section, str(b.helpful), str(b.harmful), escape(b.content))
    console.print(table)


@context_app.command("apply")
def apply_delta(
    ctx: typer.Context,
    capsule_id: Annotated[str, typer.Argument(help="the writing capsule")],
    delta_file: Annotated[Path, typer.Argument(help='JSON delta: {"ops": [...]}')],
    as_json: JsonFlag = False,
) -> None:
    """Apply a delta (ADD / UPDATE / TAG / REMOVE operations) to the capsule's playbook."""
    from trifecta.context.deltas import Delta

    delta = Delta.model_validate_json(_read_json(delta_file, "delta_file"))
    result = _service(ctx).apply_delta(capsule_id, delta)
    _emit(
        result,
        as_json,
        f"applied {len(result.applied)}, skipped {len(result.skipped)}, "
        f"ignored {len(result.ignored)}; merged {len(result.merged)}, evicted "
        f"{len(result.evicted)}; {result.domain} is at version {result.version}",
    )


@context_app.command("learn")
def learn(
    ctx: typer.Context,
    trajectory_file: Annotated[Path, typer.Argument(help="JSON trajectory")],
    as_json: JsonFlag = False,
) -> None:
    """Learn from a trajectory: tag bullets, apply the curator's delta, distil memories."""
    from trifecta.context.trajectory import Trajectory

    trajectory = Trajectory.model_validate_json(_read_json(trajectory_file, "trajectory_file"))
    result = _service(ctx, with_model=True).learn(trajectory)
    modes = ", ".join(f"{role}: {mode}" for role, mode in result.modes.items())
    _emit(
        result,
        as_json,
        f"learned from {result.trajectory_id} ({result.outcome}; {modes}); "
        f"{len(result.reflection.tags)} tags, {len(result.memories)} memories; "
        f"{result.domain} is at version {result.version}",
    )


@memory_app.command("add")
def memory_add(
    ctx: typer.Context,
    capsule_id: Annotated[str, typer.Argument(help="the writing capsule")],
    items_file: Annotated[
        Path, typer.Argument(help='JSON: {"items": [{title, content, outcome}]}')
    ],
    as_json: JsonFlag = False,
) -> None:
    """Add memory items to the capsule's domain."""
    from trifecta.context.models import AddMemoriesRequest

    request = AddMemoriesRequest.model_validate_json(_read_json(items_file, "items_file"))
    result = _service(ctx).add_memories(capsule_id, request.items)
    counts = {
        s: sum(1 for i in result.items if i.status == s) for s in ("added", "reinforced", "exists")
    }
    _emit(result, as_json, ", ".join(f"{n} {s}" for s, n in counts.items()))


@memory_app.command("search")
def memory_search(
    ctx: typer.Context,
    capsule_id: Annotated[str, typer.Argument(help="the reading capsule")],
    query: Annotated[str, typer.Argument(help="text to match")],
    k: Annotated[int, typer.Option(help="how many")] = 5,
    outcome: Annotated[str | None, typer.Option(help="success | failure")] = None,
    max_age_s: Annotated[float | None, typer.Option(help="only items younger than this")] = None,
    domain: DomainOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Top-k memories of the capsule's domain by similarity to the query."""
    from trifecta.context.models import MemoryQuery

    result = _service(ctx).search_memories(
        capsule_id,
        MemoryQuery(query=query, k=k, outcome=outcome, max_age_s=max_age_s, domain=domain),
    )
    lines = [
        f"{h.similarity:.3f} [{h.memory.outcome}] {h.memory.id} {h.memory.title}"
        for h in result.hits
    ]
    _emit(result, as_json, "\n".join(lines) or "(no memories)")


@context_app.command("migrate")
def migrate(
    ctx: typer.Context,
    source: Annotated[
        str, typer.Option("--from", help="source database URL, e.g. sqlite:///ctx.db")
    ],
    target: Annotated[
        str,
        typer.Option(
            "--to",
            help="target: a configured place (environment name or its shard_urls database); "
            "with --no-switch, any database URL",
        ),
    ],
    domains: Annotated[
        list[str] | None, typer.Option("--domain", help="only this domain (repeatable)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="rows per committed batch")] = 500,
    switch: Annotated[
        bool, typer.Option(help="re-point the shard map at the target (a configured place)")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Copy domains between databases (e.g. SQLite -> Postgres), verified and resumable.

    Copies in committed batches, verifies row counts and checksums, fences the source and
    re-points the shard map. Re-run the same command after an interruption to resume."""
    from trifecta.context.admin import ShardAdmin
    from trifecta.context.admin import migrate as run_migration

    admin = ShardAdmin(_service(ctx)) if switch else None
    progress, report = _progress_bar()
    with progress:
        result = run_migration(
            source,
            target,
            domains=domains,
            batch_size=batch_size,
            switch=admin,
            progress=report,
        )
    _emit(
        result,
        as_json,
        f"migrated {len(result.domains)} domains, {result.rows} rows copied, "
        f"all verified (counts and checksums) from {result.source} to {result.target}",
    )


@shard_app.command("list")
def shard_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Where each domain lives, and which domains are shared."""
    from trifecta.context.admin import ShardAdmin

    listing = ShardAdmin(_service(ctx)).listing()
    lines = [f"default: {listing.default_url}"]
    lines += [
        f"{s.domain}: {s.url}" + (f" ({s.place.name})" if s.place else "") for s in listing.shards
    ]
    lines += [f"shared: {s.domain} -> {s.grantee}" for s in listing.shares]
    _emit(listing, as_json, "\n".join(lines))


@shard_app.command("places")
def shard_places(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The configured places a domain may move to (environments keeping context shards)."""
    from pydantic import RootModel

    from trifecta.context.admin import ShardAdmin
    from trifecta.context.shards import hide_password

    places = ShardAdmin(_service(ctx)).places
    lines = [
        f"{p.environment.name} ({p.environment.kind}"
        f"{', ' + p.environment.jurisdiction if p.environment.jurisdiction else ''}): "
        f"{hide_password(p.url)}"
        for p in places.values()
    ]
    listing = RootModel[dict[str, str]]({n: hide_password(p.url) for n, p in places.items()})
    _emit(listing, as_json, "\n".join(lines))


@shard_app.command("move")
def shard_move(
    ctx: typer.Context,
    domain: Annotated[str, typer.Argument(help="the domain to move")],
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="the target place: an environment that keeps context shards (see `shard "
            "places`) or the database configured for it; its place is derived from it",
        ),
    ],
    batch_size: Annotated[int, typer.Option(min=1, help="rows per committed batch")] = 500,
    keep_source: Annotated[bool, typer.Option(help="leave the fenced rows on the source")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Move a domain to another configured place while it keeps taking writes."""
    from trifecta.context.admin import MoveRequest, ShardAdmin

    request = MoveRequest(to=to, batch_size=batch_size, keep_source=keep_source)
    progress, report = _progress_bar()
    with progress:
        result = ShardAdmin(_service(ctx)).move(domain, request, progress=report)
    _emit(
        result,
        as_json,
        f"moved {domain} to {result.target}: {result.copied_rows} rows copied in "
        f"{result.catch_up_passes} catch-up passes, verified, switched at version "
        f"{result.final_version}",
    )


@shard_app.command("share")
def shard_share(
    ctx: typer.Context,
    domain: Annotated[str, typer.Argument(help="the domain to share")],
    grantee: Annotated[str, typer.Option("--with", help="a domain, or '*' for every domain")],
) -> None:
    """Let another domain's capsules read this domain."""
    from trifecta.context.admin import ShardAdmin

    share = ShardAdmin(_service(ctx)).share(domain, grantee)
    typer.echo(f"{share.domain} is readable by {share.grantee}")


@shard_app.command("unshare")
def shard_unshare(
    ctx: typer.Context,
    domain: Annotated[str, typer.Argument(help="the shared domain")],
    grantee: Annotated[str, typer.Option("--with", help="the domain (or '*') to revoke")],
) -> None:
    """Revoke a share."""
    from trifecta.context.admin import ShardAdmin

    ShardAdmin(_service(ctx)).unshare(domain, grantee)
    typer.echo(f"{domain} is no longer readable by {grantee}")
