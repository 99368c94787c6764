"""`trifecta run`: the main job on the embedded default (what `make run` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from trifecta.core.errors import InvalidInput

if TYPE_CHECKING:  # the bridge pulls in the layers (torch): only the run command needs it
    from trifecta.federation.mock import Fault

console = Console()


def _faults(down: list[str], latency: list[str]) -> dict[str, Fault]:
    from trifecta.federation.mock import Fault

    faults: dict[str, Fault] = {name: Fault(down=True) for name in down}
    for item in latency:
        name, _, value = item.partition("=")
        try:
            ms = float(value.removesuffix("ms"))
        except ValueError:
            raise InvalidInput(f"{item!r} is not ENV=MILLISECONDS", field="latency") from None
        faults[name] = faults.get(name, Fault()).model_copy(update={"latency_ms": ms})
    return faults


def run_command(
    requests: int = typer.Option(600, min=1, help="tasks to serve"),
    seed: int | None = typer.Option(None, help="workload seed (default: a new one per run)"),
    workers: int = typer.Option(
        16,  # run.DEFAULT_WORKERS (not imported: it pulls in the layers)
        min=1,
        max=64,
        help="requests served at once (the layers batch across them)",
    ),
    fleet: Path | None = typer.Option(None, help="fleet YAML (default: the shipped fleet)"),
    topology: Path | None = typer.Option(None, help="topology YAML (default: the shipped one)"),
    down: list[str] = typer.Option([], help="take an environment down (repeatable)"),
    latency: list[str] = typer.Option([], help="add latency, e.g. inference=20ms (repeatable)"),
    out: Path | None = typer.Option(None, help="report folder (default: <data>/runs/<run id>)"),
    phase: str | None = typer.Option(
        None, help="dev | pilot | full: the playbook phase to plan and price by (default: settings)"
    ),
    federated: bool = typer.Option(
        False,
        "--federated",
        help="run every environment as its own server (`trifecta up`) and serve through them",
    ),
) -> None:
    """Serve real tasks through every layer on the embedded default, and report.

    The report gives per-layer throughput and latency, accuracy, escalation and edge shares,
    what the context layer learned, and the cost by the playbook's tables.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from trifecta.core.logging import log_to_file
    from trifecta.core.settings import get_settings
    from trifecta.fleet.fleetfile import load_fleet
    from trifecta.fleet.topology import load_topology
    from trifecta.orchestrator.run import new_run_id, run
    from trifecta.orchestrator.stack import Stack

    settings = get_settings()
    if phase is not None:
        from trifecta.core.settings import PHASES

        if phase not in PHASES:
            raise InvalidInput(f"unknown phase {phase!r}", field="phase", allowed=PHASES)
        settings = settings.model_copy(update={"phase": phase})
    capsules = load_fleet(fleet) if fleet else None
    topo = load_topology(topology) if topology else None
    faults = _faults(down, latency)
    run_id = new_run_id()
    runs = settings.data_dir / "runs"
    out_dir = out or runs / run_id
    # One info line per request would bury the report: they go to the run's log file, and
    # only warnings and errors reach the terminal.
    log_to_file(out_dir / "run.log")
    if seed is None:
        seed = len(list(runs.glob("*/report.json"))) if runs.is_dir() else 0
    federation = None
    if federated:
        from trifecta.federation.processes import seed_registry, up

        seed_registry(settings)
        with console.status("starting every environment as its own server") as shown:
            federation = up(
                settings,
                topo or load_topology(settings.topology),
                topology_file=topology,
                on_started=lambda name: shown.update(f"{name} is up; waiting for the others"),
            )
    try:
        with console.status("bringing the stack up (models, context shards, edge mesh)"):
            stack = Stack(
                settings=settings,
                capsules=capsules,
                topology=topo,
                faults=faults,
                seed=seed,
                remote=federation.bridge(topo or load_topology(settings.topology))
                if federation
                else None,
            )
            stack.warm_up()
    except BaseException:
        _stop(federation, settings)
        raise
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            job = bar.add_task(f"serving {requests} tasks", total=requests)
            report = run(
                stack,
                requests=requests,
                seed=seed,
                workers=workers,
                out_dir=out_dir,
                progress=lambda n: bar.advance(job, n),
                run_id=run_id,
            )
    finally:
        stack.close()
        _stop(federation, settings)
    print_report(report)
    console.print(f"report: {out_dir / 'report.json'} (plots: latency.png, accuracy.png, cost.png)")
    console.print(f"log: {out_dir / 'run.log'}")


def _stop(federation: object, settings: object) -> None:
    if federation is not None:
        from trifecta.core.settings import Settings
        from trifecta.federation.processes import down

        assert isinstance(settings, Settings)
        down(settings)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.2e}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_report(report: object) -> None:
    from trifecta.orchestrator.report import RunReport

    assert isinstance(report, RunReport)
    head = Table(title=f"Run {report.run_id} ({report.phase} phase)", show_header=False)
    head.add_row(
        "workload",
        f"seed {report.seed}, {report.capsules} capsules"
        + (", environments as their own servers" if report.federated else ", in-process"),
    )
    if report.faults:
        head.add_row(
            "faults injected", "; ".join(f"{env}: {what}" for env, what in report.faults.items())
        )
    head.add_row("requests served / refused", f"{report.requests} / {report.failed}")
    if report.refusals:
        head.add_row(
            "refused because", ", ".join(f"{why} x{n}" for why, n in report.refusals.items())
        )
    head.add_row(
        "throughput", f"{report.throughput_rps:.1f} requests/s over {report.seconds:.1f} s"
    )
    head.add_row("accuracy (task verifier)", _pct(report.accuracy))
    head.add_row(
        "edge share / cache share", f"{_pct(report.edge_share)} / {_pct(report.cache_share)}"
    )
    head.add_row("escalation rate (cognitive)", _pct(report.escalation_rate))
    console.print(head)

    routes = Table(title="Per layer")
    for col in ("route", "requests", "share", "req/s", "p50 ms", "p99 ms", "accuracy"):
        routes.add_column(col, justify="right" if col != "route" else "left")
    for r in report.routes:
        routes.add_row(
            r.route,
            str(r.requests),
            _pct(r.share),
            f"{r.throughput_rps:.1f}",
            _ms(r.p50_ms),
            _ms(r.p99_ms),
            _pct(r.accuracy),
        )
    console.print(routes)

    grades = Table(title="Accuracy by task grade")
    grades.add_column("grade")
    cols = ["cache", "edge", "cognitive", "generative", "all"]
    for c in cols:
        grades.add_column(c, justify="right")
    for g, by in report.accuracy_by_grade.items():
        grades.add_row(g, *[_pct(by.get(c)) for c in cols])
    console.print(grades)

    ctx = report.context
    learn = Table(title="Context layer (ACE playbooks + ReasoningBank)", show_header=False)
    learn.add_row("domains", str(ctx.domains))
    learn.add_row(
        "playbook bullets",
        f"{ctx.bullets_before} -> {ctx.bullets_after} ({ctx.pruned_after} pruned)",
    )
    learn.add_row("routing rules active", str(ctx.rules_after))
    learn.add_row("requests that followed a rule", str(ctx.requests_following_rules))
    learn.add_row("memory items", f"{ctx.memories_before} -> {ctx.memories_after}")
    learn.add_row("requests learned from", str(ctx.learned))
    console.print(learn)

    cost = report.cost
    money = Table(title="Cost (playbook cost tables)", show_header=False)
    money.add_row("this run", f"${cost.total_usd:.6f} (${cost.usd_per_request:.2e} per request)")
    money.add_row(
        "fleet at declared demand",
        f"${cost.usd_per_hour_at_demand:.2f}/hour "
        f"(planner provisions ${cost.plan_usd_per_hour:.2f}/hour)",
    )
    money.add_row("by layer", ", ".join(f"{k} ${v:.6f}" for k, v in cost.by_layer.items()))
    money.add_row(
        "by environment", ", ".join(f"{k} ${v:.6f}" for k, v in cost.by_environment.items())
    )
    console.print(money)

    kinds = Table(title="Per capsule-month, beside the playbook")
    for col in ("kind", "capsules", "measured at demand", "planner", "playbook"):
        kinds.add_column(col, justify="right" if col != "kind" else "left")
    for k in cost.kinds:
        kinds.add_row(
            k.kind,
            str(k.capsules),
            f"${k.month_at_demand:,.2f}",
            "-" if k.plan_month is None else f"${k.plan_month:,.2f}",
            "-" if k.playbook_month is None else f"${k.playbook_month:,.0f}",
        )
    console.print(kinds)

    if report.previous:
        now = report.headline()
        cmp = Table(title="Compared with the previous run on this data directory")
        for col in ("figure", "previous", "this run"):
            cmp.add_column(col)
        for key, before in report.previous.items():
            after = now.get(key)
            fmt = _ms if key.endswith("_ms") else _usd if key.startswith("usd") else _pct
            cmp.add_row(key, fmt(before), fmt(after))
        console.print(cmp)
    check = report.consistency
    console.print(
        f"[dim]checked against the database: {check.requests_logged} requests logged, "
        f"ledger ${check.ledger_usd:.6f} = requests ${check.request_usd:.6f}[/dim]"
    )
