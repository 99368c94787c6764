"""Rich tables for the control plane's commands."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from rich.console import Console, Group
from rich.table import Table

from trifecta.core.settings import Phase
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.costs import HOURS_PER_MONTH, capsule_month_table
from trifecta.fleet.plan_model import Plan
from trifecta.fleet.sizing import ModelSpec, Sizing


def _money(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"${value:,.{digits}f}"


def _gb(value: float) -> str:
    return f"{value / 1e9:,.1f}"


def capsule_table(capsules: Sequence[Capsule]) -> Table:
    table = Table(title=f"{len(capsules)} capsules")
    for column in (
        "id",
        "kind",
        "domain",
        "jurisdiction",
        "phase",
        "req/s",
        "tokens/req",
        "light",
        "generative",
        "quality",
    ):
        table.add_column(
            column,
            justify="right"
            if column in ("req/s", "tokens/req", "light", "generative", "quality")
            else "left",
        )
    for c in capsules:
        d = c.demand
        table.add_row(
            c.id,
            c.kind,
            c.domain,
            c.jurisdiction or "-",
            c.phase,
            f"{d.requests_per_s:g}",
            str(d.tokens_per_request),
            f"{d.light_share:g}",
            f"{d.generative_share:g}",
            f"{c.quality_target:g}",
        )
    return table


def fleet_summary(capsules: Sequence[Capsule]) -> Group:
    kinds = Counter(c.kind for c in capsules)
    tokens = sum(c.demand.tokens_per_s for c in capsules)
    requests = sum(c.demand.requests_per_s for c in capsules)
    table = Table(
        title=f"{len(capsules)} capsules, {requests:,.2f} requests/s, {tokens:,.0f} tokens/s"
    )
    table.add_column("kind")
    table.add_column("capsules", justify="right")
    table.add_column("domains")
    table.add_column("jurisdictions")
    for kind, count in sorted(kinds.items()):
        mine = [c for c in capsules if c.kind == kind]
        table.add_row(
            kind,
            str(count),
            ", ".join(sorted({c.domain for c in mine})),
            ", ".join(sorted({c.jurisdiction for c in mine if c.jurisdiction})) or "-",
        )
    return Group(table)


def sizing_table(spec: ModelSpec, rows: Sequence[Sizing], phase: Phase) -> Table:
    first = rows[0] if rows else None
    title = (
        f"{spec.name}: {spec.params / 1e9:,.1f} B parameters at {spec.bits_per_weight:g} "
        f"bits, phase {phase}"
    )
    if first is not None:
        title += (
            f"\nweights {_gb(first.weight_bytes)} GB, KV cache {_gb(first.kv_bytes)} GB "
            f"(batch {first.batch} x {first.context:,} tokens)"
        )
    table = Table(title=title)
    for column in (
        "accelerator",
        "fits",
        "TP",
        "bound",
        "decode tok/s",
        "$/device-h",
        "$/hour",
        "$/M tokens",
    ):
        table.add_column(column, justify="left" if column in ("accelerator", "bound") else "right")
    for row in rows:
        if row.fits:
            table.add_row(
                row.accelerator,
                "yes",
                str(row.tp_degree),
                row.bound,
                f"{row.decode_tokens_per_s:,.0f}",
                _money(row.hour_price),
                _money(row.cost_per_hour),
                _money(row.cost_per_million_tokens, 3),
            )
        else:
            table.add_row(
                row.accelerator,
                f"[red]no[/]: {row.reason}",
                "-",
                "-",
                "-",
                _money(row.hour_price),
                "-",
                "-",
            )
    return table


def print_plan(console: Console, plan: Plan, *, capsules_shown: int = 10) -> None:
    solver = plan.solver
    budget = f" (target {_money(plan.budget_per_hour)}/hour)" if plan.budget_per_hour else ""
    gap = f", gap {solver.mip_gap:.2%}" if solver.mip_gap is not None else ""
    console.print(
        f"[bold]Plan[/] for {solver.capsules} capsules ({solver.classes} classes) on "
        f"[bold]{plan.topology}[/], phase [bold]{plan.phase}[/]: "
        f"[bold]{_money(plan.cost_per_hour)}/hour[/]{budget}, "
        f"{_money(plan.cost_per_month, 0)}/month\n"
        f"[dim]{solver.method}: {solver.status} in {solver.seconds:.2f} s{gap}[/]"
    )
    if len(solver.candidates) > 1:
        compared = ", ".join(
            f"{method} {_money(cost)}"
            for method, cost in sorted(solver.candidates.items(), key=lambda item: item[1])
        )
        console.print(f"[dim]cheapest of: {compared}[/]")

    envs = Table(title="Environments")
    for column in (
        "environment",
        "kind",
        "jurisdiction",
        "capsules",
        "devices",
        "context replicas",
        "$/hour",
    ):
        envs.add_column(
            column,
            justify="right" if column in ("capsules", "context replicas", "$/hour") else "left",
        )
    for env in plan.environments:
        devices = ", ".join(f"{n} x {a}" for a, n in env.devices.items()) or "-"
        envs.add_row(
            env.environment,
            env.kind,
            env.jurisdiction or "-",
            str(env.capsules),
            devices,
            str(env.context_replicas),
            _money(env.cost_per_hour),
        )
    console.print(envs)

    kinds = Table(title=f"Per capsule kind, beside the playbook's monthly table ({plan.phase})")
    for column in ("kind", "capsules", "$/hour", "$/capsule-month", "playbook", "plan/playbook"):
        kinds.add_column(column, justify="left" if column == "kind" else "right")
    for kind in plan.kinds:
        ratio = kind.ratio_to_playbook
        kinds.add_row(
            kind.kind,
            str(kind.capsules),
            _money(kind.cost_per_hour),
            _money(kind.cost_per_capsule_month, 0),
            _money(kind.playbook_capsule_month, 0),
            f"{ratio:.2f}" if ratio is not None else "-",
        )
    listed = {k.kind for k in plan.kinds}
    for name, row in capsule_month_table().items():
        if name not in listed:
            kinds.add_row(name, "0", "-", "-", _money(row.prices[plan.phase], 0), "-")
    console.print(kinds)

    pools = Table(title="Replica pools")
    for column in (
        "environment",
        "layer",
        "model",
        "accelerator",
        "TP",
        "replicas",
        "load",
        "utilisation",
        "$/hour",
    ):
        pools.add_column(
            column,
            justify="right"
            if column in ("TP", "replicas", "load", "utilisation", "$/hour")
            else "left",
        )
    for pool in plan.pools:
        unit = "req/s" if pool.layer == "context" else "tok/s"
        pools.add_row(
            pool.environment,
            pool.layer,
            pool.model,
            pool.accelerator or "cpu",
            str(pool.tp_degree),
            str(pool.replicas),
            f"{pool.load:,.1f} {unit}",
            f"{pool.utilisation:.0%}",
            _money(pool.cost_per_hour),
        )
    console.print(pools)

    if capsules_shown > 0:
        costly = sorted(plan.assignments, key=lambda a: -a.cost_per_hour)[:capsules_shown]
        table = Table(title=f"Capsules (the {len(costly)} costliest of {len(plan.assignments)})")
        for column in (
            "capsule",
            "kind",
            "environment",
            "tier",
            "accelerators",
            "edge share",
            "$/month",
        ):
            table.add_column(
                column, justify="right" if column in ("edge share", "$/month") else "left"
            )
        for a in costly:
            table.add_row(
                a.capsule_id,
                a.kind,
                a.environment,
                a.tier,
                ", ".join(a.accelerators),
                f"{a.edge_share:.0%}",
                _money(a.cost_per_hour * HOURS_PER_MONTH, 0),
            )
        console.print(table)
    tiers = ", ".join(f"{tier}: {count}" for tier, count in plan.tiers.items())
    console.print(f"[dim]capsules per tier: {tiers}[/]")
