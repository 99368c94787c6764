"""The report of a `trifecta run`: what every layer did, how well, at what cost, and what the
context layer learned; saved as JSON beside its plots, and compared with the previous run on
the same data directory."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from trifecta.core.settings import Phase
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.plan_model import Plan
from trifecta.orchestrator.ledger import SECONDS_PER_MONTH, Rollup, playbook_month
from trifecta.orchestrator.models import TaskResult

ROUTES = ("cache", "edge", "cognitive", "generative", "symbolic", "neural")


class RouteRow(BaseModel):
    route: str
    requests: int
    share: float
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    accuracy: float | None = Field(description="verified correct / verified")


class KindCost(BaseModel):
    kind: str
    capsules: int
    usd_per_request: float = Field(description="at the capsules' declared request size")
    month_at_demand: float = Field(description="USD per capsule-month at its declared demand")
    playbook_month: float | None = Field(description="the playbook's capsule-month price")
    plan_month: float | None = Field(description="the planner's provisioned USD per capsule-month")


class ContextGrowth(BaseModel):
    domains: int
    bullets_before: int
    bullets_after: int
    pruned_after: int
    memories_before: int
    memories_after: int
    rules_after: int = Field(description="active routing rules")
    requests_following_rules: int
    learned: int = Field(description="requests the context layer learned from")


class CostSummary(BaseModel):
    total_usd: float
    usd_per_request: float
    usd_per_hour_at_demand: float = Field(description="the fleet at its declared request rates")
    plan_usd_per_hour: float = Field(description="the planner's provisioned cost")
    by_layer: dict[str, float]
    by_environment: dict[str, float]
    kinds: list[KindCost]


class Consistency(BaseModel):
    """The report's figures checked against the database."""

    requests_logged: int
    ledger_usd: float
    request_usd: float


class RunReport(BaseModel):
    run_id: str
    phase: Phase
    seconds: float
    requests: int
    failed: int = Field(description="requests refused (quota, no allowed environment)")
    throughput_rps: float
    capsules: int
    routes: list[RouteRow]
    escalation_rate: float = Field(description="cognitive requests handed to a larger tier")
    edge_share: float
    cache_share: float
    accuracy: float | None
    accuracy_by_grade: dict[str, dict[str, float]] = Field(description="grade -> route -> acc")
    context: ContextGrowth
    cost: CostSummary
    consistency: Consistency
    previous: dict[str, float | None] | None = Field(
        default=None, description="the previous run's headline figures, for comparison"
    )
    seed: int | None = Field(default=None, description="the seed that drew the workload")
    faults: dict[str, str] = Field(
        default_factory=dict, description="environment -> the faults injected into it"
    )
    federated: bool = Field(default=False, description="environments ran as their own servers")
    refusals: dict[str, int] = Field(
        default_factory=dict, description="why requests were refused -> how many"
    )

    def headline(self) -> dict[str, float | None]:
        return {
            "accuracy": self.accuracy,
            "usd_per_request": self.cost.usd_per_request,
            "cache_share": self.cache_share,
            "edge_share": self.edge_share,
            "escalation_rate": self.escalation_rate,
            "p50_ms": _percentile([r.p50_ms for r in self.routes if r.p50_ms], 50),
        }


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _accuracy(results: Sequence[TaskResult]) -> float | None:
    judged = [r.verified for r in results if r.verified is not None]
    return sum(judged) / len(judged) if judged else None


def route_rows(results: Sequence[TaskResult], seconds: float) -> list[RouteRow]:
    rows = []
    for route in ROUTES:
        chosen = [r for r in results if r.route == route]
        latencies = [r.latency_ms for r in chosen]
        rows.append(
            RouteRow(
                route=route,
                requests=len(chosen),
                share=len(chosen) / max(1, len(results)),
                throughput_rps=len(chosen) / seconds if seconds else 0.0,
                p50_ms=_percentile(latencies, 50),
                p99_ms=_percentile(latencies, 99),
                accuracy=_accuracy(chosen),
            )
        )
    return rows


def accuracy_by_grade(
    results: Sequence[TaskResult], grades: dict[str, int | None]
) -> dict[str, dict[str, float]]:
    cells: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        grade = grades.get(r.id)
        if grade is not None and r.verified is not None:
            cells[str(grade)][r.route].append(r.verified)
            cells[str(grade)]["all"].append(r.verified)
    return {
        g: {route: sum(v) / len(v) for route, v in sorted(by.items())}
        for g, by in sorted(cells.items())
    }


def unit_cost(results: Sequence[TaskResult], tokens_per_request: int) -> float:
    """USD per request at `tokens_per_request`: the model layers' measured USD per token scaled
    to the declared request size (the task family's requests are a few dozen tokens, a
    capsule's real ones hundreds), plus the context layer's measured USD per request."""
    if not results:
        return 0.0
    context = sum(r.cost.by_layer.get("context", 0.0) for r in results)
    model = sum(r.cost.usd for r in results) - context
    tokens = sum(h.tokens for r in results for h in r.hops if h.layer != "context")
    per_token = model / tokens if tokens else 0.0
    return per_token * tokens_per_request + context / len(results)


def kind_costs(
    results: Sequence[TaskResult], capsules: dict[str, Capsule], phase: Phase, plan: Plan
) -> tuple[list[KindCost], float]:
    """Per kind: the measured cost of a request at each capsule's declared size and rate,
    projected to a capsule-month, beside the playbook's and the planner's figures; and the
    fleet's USD/hour at its declared demand."""
    served: dict[str, list[TaskResult]] = defaultdict(list)
    for r in results:
        served[r.capsule_id].append(r)
    plan_month = {k.kind: k.cost_per_capsule_month for k in plan.kinds}
    rows, fleet_hour = [], 0.0
    for kind in sorted({c.kind for c in capsules.values()}):
        members = [c for c in capsules.values() if c.kind == kind]
        of_kind = [r for c in members for r in served.get(c.id, [])]
        units, months = [], []
        for capsule in members:
            # A capsule the workload did not reach is priced by its kind's requests.
            unit = unit_cost(served.get(capsule.id) or of_kind, capsule.demand.tokens_per_request)
            units.append(unit)
            months.append(unit * capsule.demand.requests_per_s * SECONDS_PER_MONTH)
            fleet_hour += unit * capsule.demand.requests_per_s * 3600
        rows.append(
            KindCost(
                kind=kind,
                capsules=len(members),
                usd_per_request=statistics.fmean(units),
                month_at_demand=statistics.fmean(months),
                playbook_month=playbook_month(kind, phase),
                plan_month=plan_month.get(kind),
            )
        )
    return rows, fleet_hour


def rollup_map(rows: Sequence[Rollup]) -> dict[str, float]:
    return {r.key: r.usd for r in rows}


def previous_report(runs_dir: Path, run_id: str) -> RunReport | None:
    """The latest report saved before `run_id` in the same data directory."""
    found = sorted(
        (p for p in runs_dir.glob("*/report.json") if p.parent.name != run_id),
        key=lambda p: p.stat().st_mtime,
    )
    return RunReport.model_validate_json(found[-1].read_text()) if found else None
