"""The main job (`trifecta run`, what `make run` runs): bring the stack up on the embedded
default, serve a workload of real tasks through every layer, and report."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trifecta.core.errors import TrifectaError, Unavailable
from trifecta.core.logging import get_logger
from trifecta.fleet.capsules import Capsule
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import TaskRequest, TaskResult
from trifecta.orchestrator.plots import save_plots
from trifecta.orchestrator.records import RequestLog
from trifecta.orchestrator.report import (
    Consistency,
    ContextGrowth,
    CostSummary,
    RunReport,
    accuracy_by_grade,
    kind_costs,
    previous_report,
    rollup_map,
    route_rows,
)
from trifecta.orchestrator.routing import NO_EDGE, START
from trifecta.orchestrator.stack import Stack
from trifecta.orchestrator.workload import WorkItem, build_workload

log = get_logger("trifecta.run")
Progress = Callable[[int], None]
# Requests served at once by `trifecta run`: enough for the layers that batch (the serving
# layer's continuous batching, the coalesced query embeddings) to fill their batches.
DEFAULT_WORKERS = 16


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def context_sizes(stack: Stack) -> dict[str, tuple[int, int, int, int]]:
    """domain -> (active bullets, pruned bullets, memories, active routing rules), read through
    one capsule of the domain (tenancy applies to the report too). A domain whose environment
    is down is left out: the report counts what it could read, and the run goes on."""
    sizes = {}
    by_domain = {c.domain: c for c in stack.capsules.all()}
    for domain, capsule in sorted(by_domain.items()):
        env = stack.place_domain(domain)
        client = stack.bridge.context(capsule, env)
        try:
            stats = client.stats(capsule.id)
            bullets = client.playbook(capsule.id).bullets
        except Unavailable as exc:
            log.info("context size not read", domain=domain, reason=exc.one_line())
            continue
        rules = sum(1 for b in bullets if b.section.startswith((START, NO_EDGE)))
        sizes[domain] = (
            stats.active_bullets,
            stats.bullets.get("pruned", 0),
            stats.memories,
            rules,
        )
    return sizes


def drain_learning(stack: Stack, timeout_s: float = 300.0) -> None:
    """Wait until every context environment has learned from what the run queued."""
    by_env: dict[str, Capsule] = {}
    for capsule in stack.capsules.all():
        try:
            by_env.setdefault(stack.place_domain(capsule.domain), capsule)
        except TrifectaError:
            continue
    for env, capsule in sorted(by_env.items()):
        try:
            if not stack.bridge.context(capsule, env).drain(timeout_s):
                log.warning("learning still queued", environment=env)
        except Unavailable as exc:
            log.info("learning not drained", environment=env, reason=exc.one_line())


def serve_workload(
    orchestrator: Orchestrator,
    items: list[WorkItem],
    *,
    workers: int,
    progress: Progress | None = None,
) -> tuple[list[TaskResult], dict[str, int]]:
    """Serve every item; a refused request costs only itself, and its reason is counted."""
    results: list[TaskResult] = []
    refusals: dict[str, int] = {}

    def one(item: WorkItem) -> TaskResult | str:
        try:
            return orchestrator.serve(item.capsule_id, TaskRequest(prompt=item.task.prompt))
        except TrifectaError as exc:
            log.warning("request refused", capsule=item.capsule_id, reason=exc.one_line())
            return type(exc).__name__

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for outcome in pool.map(one, items):
            if isinstance(outcome, str):
                refusals[outcome] = refusals.get(outcome, 0) + 1
            else:
                results.append(outcome)
            if progress is not None:
                progress(1)
    orchestrator.settle()
    return results, refusals


def run(
    stack: Stack,
    *,
    requests: int,
    seed: int,
    workers: int,
    out_dir: Path,
    progress: Progress | None = None,
    run_id: str | None = None,
) -> RunReport:
    run_id = run_id or new_run_id()
    before = context_sizes(stack)
    capsules = stack.capsules.all()
    items = build_workload(capsules, requests, seed=seed)
    orchestrator = Orchestrator(stack.parts, run_id=run_id)
    started = time.perf_counter()
    results, refusals = serve_workload(orchestrator, items, workers=workers, progress=progress)
    failed = sum(refusals.values())
    seconds = time.perf_counter() - started
    drain_learning(stack)
    after = context_sizes(stack)
    grades = _grades(results, items)
    by_id = {c.id: c for c in capsules}
    kinds, fleet_hour = kind_costs(results, by_id, stack.phase, stack.plan)
    cognitive = [r for r in results if r.route == "cognitive"]
    log_ = RequestLog(stack.engine, stack.parts.ledger)
    total = sum(r.cost.usd for r in results)
    report = RunReport(
        run_id=run_id,
        phase=stack.phase,
        seconds=seconds,
        requests=len(results),
        failed=failed,
        throughput_rps=len(results) / seconds if seconds else 0.0,
        capsules=len(capsules),
        routes=route_rows(results, seconds),
        escalation_rate=sum(r.escalated for r in cognitive) / max(1, len(cognitive)),
        edge_share=sum(r.route == "edge" for r in results) / max(1, len(results)),
        cache_share=sum(r.route == "cache" for r in results) / max(1, len(results)),
        accuracy=_share([r.verified for r in results if r.verified is not None]),
        accuracy_by_grade={},
        context=ContextGrowth(
            domains=len(after),
            bullets_before=sum(v[0] for v in before.values()),
            bullets_after=sum(v[0] for v in after.values()),
            pruned_after=sum(v[1] for v in after.values()),
            memories_before=sum(v[2] for v in before.values()),
            memories_after=sum(v[2] for v in after.values()),
            rules_after=sum(v[3] for v in after.values()),
            requests_following_rules=sum(bool(r.context and r.context.rules) for r in results),
            learned=sum(r.learned for r in results),
        ),
        cost=CostSummary(
            total_usd=total,
            usd_per_request=total / max(1, len(results)),
            usd_per_hour_at_demand=fleet_hour,
            plan_usd_per_hour=stack.plan.cost_per_hour,
            by_layer=rollup_map(stack.parts.ledger.rollup("layer", run_id=run_id)),
            by_environment=rollup_map(stack.parts.ledger.rollup("environment", run_id=run_id)),
            kinds=kinds,
        ),
        consistency=Consistency(
            requests_logged=log_.count(run_id=run_id),
            ledger_usd=sum(rollup_map(stack.parts.ledger.rollup("layer", run_id=run_id)).values()),
            request_usd=log_.usd(run_id=run_id),
        ),
    )
    report.accuracy_by_grade = accuracy_by_grade(results, grades)
    report.seed = seed
    report.federated = stack.federated
    report.faults = {env: f.describe() for env, f in stack.bridge.faults().items()}
    report.refusals = refusals
    runs_dir = out_dir.parent
    earlier = previous_report(runs_dir, run_id)
    report.previous = earlier.headline() if earlier else None
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(report.model_dump_json(indent=2))
    (out_dir / "results.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in results))
    save_plots(report, results, out_dir)
    return report


def _grades(results: list[TaskResult], items: list[WorkItem]) -> dict[str, int | None]:
    by_prompt: dict[tuple[str, str], int | None] = {
        (i.capsule_id, i.task.prompt): None if i.task.kind == "rule" else i.task.difficulty
        for i in items
    }
    return {r.id: by_prompt.get((r.capsule_id, r.prompt)) for r in results}


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None
