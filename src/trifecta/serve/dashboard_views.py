"""What the dashboard's panels show, as typed views built from the running stack: the fleet
(summarised, and one page of capsules with quota, plan and spend), the topology with each
environment's and edge node's health, and the plan's cost beside the playbook's tables.

Every view is bounded whatever the fleet's size: the fleet is counted per kind, capsules come
one page at a time (their spend read from the ledger for that page's ids only), and an edge
site lists at most `MAX_NODES_SHOWN` nodes.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from pydantic import BaseModel, Field
from sqlalchemy import Engine, func, select

from trifecta.core.db import transaction
from trifecta.core.errors import TrifectaError
from trifecta.core.settings import PHASES, Phase
from trifecta.edge.mesh import EdgeMesh
from trifecta.federation.bridge import Bridge
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.costs import capsule_month_table, gpu_hour_table, phase_budget
from trifecta.fleet.plan_model import CapsuleAssignment, Plan
from trifecta.fleet.topology import Topology
from trifecta.orchestrator.ledger import Rollup
from trifecta.orchestrator.tables import requests as request_rows

PER_PAGE = 25
RATE_WINDOW_S = 60.0  # the recent request rate shown beside a capsule's quota
MAX_NODES_SHOWN = 16
PLAYBOOK_ACCELERATORS = ("rtx-5090", "a100-40gb", "coral-npu")  # the playbook's own rows


class FleetSummary(BaseModel):
    capsules: int
    by_kind: dict[str, int]
    by_jurisdiction: dict[str, int]
    domains: int


class CapsuleRow(BaseModel):
    id: str
    name: str
    kind: str
    domain: str
    jurisdiction: str | None
    quota_rps: float | None
    recent_rps: float = Field(description="requests/s over the last minute")
    share: float
    home: str | None = Field(description="the plan's home environment")
    tier: str | None
    planned_month_usd: float | None
    requests: int
    spent_usd: float


class CapsulePage(BaseModel):
    rows: list[CapsuleRow]
    page: int
    pages: int
    matching: int
    query: str


class NodeRow(BaseModel):
    name: str
    healthy: bool
    seen_s_ago: float | None
    failures: int
    in_flight: int


class EnvironmentRow(BaseModel):
    name: str
    kind: str
    jurisdiction: str | None
    where: str
    in_phase: bool
    reserved_for: list[str] | None
    status: str = Field(description="up, down, or idle (not serving in this phase)")
    services: list[str]
    served: int | None
    refused: int | None
    capsules_homed: int
    cost_per_hour: float
    healthy_nodes: int | None
    nodes: list[NodeRow]
    more_nodes: int


class PriceLine(BaseModel):
    name: str
    prices: dict[str, float]
    source: str


class PlanView(BaseModel):
    plan: Plan
    budget_per_hour: float | None
    gpu_hours: list[PriceLine]
    capsule_months: list[PriceLine]
    devices: dict[str, int]
    spent_by_layer: list[Rollup]
    phases: tuple[Phase, ...] = PHASES

    @property
    def within_budget(self) -> bool | None:
        if self.budget_per_hour is None:
            return None
        return self.plan.cost_per_hour <= self.budget_per_hour


def fleet_summary(capsules: Sequence[Capsule]) -> FleetSummary:
    return FleetSummary(
        capsules=len(capsules),
        by_kind=dict(sorted(Counter(c.kind for c in capsules).items())),
        by_jurisdiction=dict(sorted(Counter(c.jurisdiction or "none" for c in capsules).items())),
        domains=len({c.domain for c in capsules}),
    )


def recent_requests(engine: Engine, capsule_ids: list[str]) -> dict[str, int]:
    """Requests each capsule made in the last `RATE_WINDOW_S` seconds (the request log)."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=RATE_WINDOW_S)
    query = (
        select(request_rows.c.capsule_id, func.count())
        .where(request_rows.c.capsule_id.in_(capsule_ids), request_rows.c.created_at >= since)
        .group_by(request_rows.c.capsule_id)
    )
    with transaction(engine) as session:
        return {str(c): int(n) for c, n in session.execute(query)}


def capsule_page(
    capsules: Iterable[Capsule],
    assignments: dict[str, CapsuleAssignment],
    spend: Callable[[list[str]], list[Rollup]],
    recent: Callable[[list[str]], dict[str, int]] = lambda ids: {},
    *,
    page: int = 1,
    query: str = "",
    per_page: int = PER_PAGE,
) -> CapsulePage:
    """One page of the capsules whose id, name, domain or kind contains `query`, by id; the
    ledger and the request log are asked about that page's capsules only."""
    needle = query.strip().lower()
    matching = sorted(
        (
            c
            for c in capsules
            if not needle or any(needle in s.lower() for s in (c.id, c.name, c.domain, c.kind))
        ),
        key=lambda c: c.id,
    )
    pages = max(1, math.ceil(len(matching) / per_page))
    page = min(max(1, page), pages)
    shown = matching[(page - 1) * per_page : page * per_page]
    ids = [c.id for c in shown]
    spent = {r.key: r for r in spend(ids)} if shown else {}
    counts = recent(ids) if shown else {}
    rows = []
    for capsule in shown:
        planned = assignments.get(capsule.id)
        charged = spent.get(capsule.id)
        rows.append(
            CapsuleRow(
                id=capsule.id,
                name=capsule.name,
                kind=capsule.kind,
                domain=capsule.domain,
                jurisdiction=capsule.jurisdiction,
                quota_rps=capsule.quota_rps,
                recent_rps=counts.get(capsule.id, 0) / RATE_WINDOW_S,
                share=capsule.share,
                home=planned.environment if planned else None,
                tier=planned.tier if planned else None,
                planned_month_usd=planned.cost_per_month if planned else None,
                requests=charged.requests if charged else 0,
                spent_usd=charged.usd if charged else 0.0,
            )
        )
    return CapsulePage(rows=rows, page=page, pages=pages, matching=len(matching), query=query)


def _nodes(mesh: EdgeMesh) -> tuple[list[NodeRow], int]:
    now = time.monotonic()
    states = sorted(mesh.node_states(), key=lambda s: s.key)
    rows = [
        NodeRow(
            name=state.key,
            healthy=state.healthy,
            seen_s_ago=round(now - state.last_seen, 1) if state.last_seen else None,
            failures=state.failures,
            in_flight=state.in_flight,
        )
        for state in states[:MAX_NODES_SHOWN]
    ]
    return rows, max(0, len(states) - MAX_NODES_SHOWN)


def topology_rows(
    topology: Topology, phase: Phase, bridge: Bridge, meshes: dict[str, EdgeMesh], plan: Plan
) -> list[EnvironmentRow]:
    """Each environment with its health as the bridge sees it (over HTTP for a federated
    front door) and, for an edge site hosted in this process, each node's."""
    planned = {s.environment: s for s in plan.environments}
    rows = []
    for env in topology.environments:
        in_phase = env.available_in(phase)
        health = None
        if in_phase:
            try:
                health = bridge.health(env.name)
            except (TrifectaError, KeyError):
                health = None
        mesh = meshes.get(env.name)
        nodes, more = _nodes(mesh) if mesh is not None else ([], 0)
        summary = planned.get(env.name)
        rows.append(
            EnvironmentRow(
                name=env.name,
                kind=env.kind,
                jurisdiction=env.jurisdiction,
                where=f"{env.provider} {env.region}",
                in_phase=in_phase,
                reserved_for=env.reserved_for,
                status="up" if health is not None else "down" if in_phase else "idle",
                services=list(health.services) if health is not None else [],
                served=health.served if health is not None else None,
                refused=health.refused if health is not None else None,
                capsules_homed=summary.capsules if summary else 0,
                cost_per_hour=summary.cost_per_hour if summary else 0.0,
                healthy_nodes=health.edge_nodes
                if health is not None and env.kind == "edge"
                else None,
                nodes=nodes,
                more_nodes=more,
            )
        )
    return rows


def plan_view(plan: Plan, spent_by_layer: list[Rollup]) -> PlanView:
    """The plan's cost per hour and per capsule-month beside the playbook's tables."""
    gpu = gpu_hour_table()
    devices: Counter[str] = Counter()
    for pool in plan.pools:
        if pool.accelerator:
            devices[pool.accelerator] += pool.devices
    shown = [a for a in PLAYBOOK_ACCELERATORS if a in gpu] + sorted(
        a for a in devices if a not in PLAYBOOK_ACCELERATORS and a in gpu
    )
    return PlanView(
        plan=plan,
        budget_per_hour=phase_budget(plan.phase),
        gpu_hours=[
            PriceLine(name=a, prices={p: gpu[a].prices[p] for p in PHASES}, source=gpu[a].source)
            for a in shown
        ],
        capsule_months=[
            PriceLine(name=kind, prices={p: row.prices[p] for p in PHASES}, source=row.source)
            for kind, row in sorted(capsule_month_table().items())
        ],
        devices=dict(sorted(devices.items())),
        spent_by_layer=spent_by_layer,
    )
