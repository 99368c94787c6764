"""What one request carries through the loop, and the pure helpers that turn it into the
records the loop writes: its trace (hops and charges), what served it, the task-family view of
its prompt, its cost, its context use and the trajectory the context layer learns from."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from trifecta.context.models import Bullet, PlaybookView, RankedBullet, Retrieval
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import Task, make_task
from trifecta.fleet.capsules import Capsule
from trifecta.generative.service import GenerativeResponse
from trifecta.orchestrator.ledger import Charge
from trifecta.orchestrator.models import ContextUse, Cost, Hop, Route, TaskResult
from trifecta.orchestrator.routing import RouteAdvice

GENERATIVE_MAX_PROMPT = 60  # the shipped generative model's prompt budget (characters)


@dataclass
class Trace:
    """What one request accumulates on its way through the layers."""

    hops: list[Hop] = field(default_factory=list)
    charges: list[Charge] = field(default_factory=list)

    def hop(self, started: float, **fields: object) -> None:
        self.hops.append(Hop(latency_ms=(time.perf_counter() - started) * 1000, **fields))

    def failed(self, started: float, layer: str, environment: str, model: str, why: str) -> None:
        self.hop(started, layer=layer, environment=environment, model=model, ok=False, detail=why)


@dataclass
class Served:
    route: Route
    answer: str | None
    environment: str
    path: list[str]
    first_rung: str | None  # "edge" or the first tier, for the rule learner
    first_failed: bool = False  # the first rung handed the request on
    escalated: bool = False
    generative: GenerativeResponse | None = None  # for the outcome feedback to its router


def to_generative(capsule: Capsule, request_id: str, task: Task) -> bool:
    """Does this heavy request go to the generative layer? A stable draw per request id, at
    the capsule's declared generative share of the requests the edge does not take."""
    demand = capsule.demand
    if demand.generative_share <= 0 or task.light or len(task.prompt) > GENERATIVE_MAX_PROMPT:
        return False
    share = min(1.0, demand.generative_share / max(1e-9, 1.0 - demand.light_share))
    draw = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    return draw / 2**64 < share


def task_of(prompt: str, domain: str) -> Task | None:
    """The task-family view of a prompt, or None for free text the verifier cannot judge."""
    try:
        return make_task(prompt, domain)
    except InvalidInput:
        return None


def mean_of(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def cost_of(charges: list[Charge]) -> Cost:
    by_layer: dict[str, float] = {}
    for c in charges:
        by_layer[c.layer] = by_layer.get(c.layer, 0.0) + c.usd
    return Cost(
        usd=sum(by_layer.values()),
        accelerator_seconds=sum(c.accelerator_seconds for c in charges),
        by_layer=by_layer,
    )


def ranked(bullets: Iterable[Bullet]) -> list[RankedBullet]:
    """A playbook's bullets as the routing rules read them (their order does not matter)."""
    return [RankedBullet(bullet=b, score=0.0) for b in bullets]


def context_use_of(
    env: str, playbook: PlaybookView | None, retrieval: Retrieval | None, advice: RouteAdvice
) -> ContextUse | None:
    """What the context layer gave the request: the playbook's routing rules it followed, and
    the query's bullets and memories when its route retrieved them (the routes whose layer
    reads no context, such as the edge, do not)."""
    if playbook is None:
        return None
    return ContextUse(
        environment=env,
        domain=playbook.domain,
        version=retrieval.version if retrieval else playbook.version,
        bullets=[b.bullet.id for b in retrieval.bullets] if retrieval else [],
        rules=list(advice.rules),
        memories=[m.memory.id for m in retrieval.memories] if retrieval else [],
    )


def trajectory_of(
    capsule: Capsule,
    result: TaskResult,
    task: Task | None,
    *,
    judge: Literal["verifier", "client", "none"],
    verdict: bool | None,
    detail: str | None,
    suffix: str,
) -> Trajectory:
    steps = [
        TrajectoryStep(
            layer=h.layer,
            tier=h.model,
            mean_entropy=h.mean_entropy,
            tokens=h.tokens,
            latency_ms=h.latency_ms,
            escalated="handed on" in h.detail,
        )
        for h in result.hops
        if h.ok and h.layer in ("edge", "cognitive", "generative", "tensorlogic", "cache")
    ]
    outcome = "unknown" if verdict is None else "success" if verdict else "failure"
    if detail is None and task is not None and verdict is False:
        detail = f"expected {task.answer}"
    return Trajectory(
        id=result.id + suffix,
        capsule_id=capsule.id,
        domain=capsule.domain,
        task_id=task.id if task else None,
        task_kind=task.kind if task else None,
        difficulty=task.difficulty if task else None,
        prompt=result.prompt,
        answer=result.answer,
        outcome=outcome,
        judge=judge,
        verdict_detail=detail,
        steps=steps,
        bullet_ids=list(result.context.rules) if result.context else [],
        memory_ids=list(result.context.memories) if result.context else [],
        latency_ms=result.latency_ms,
        cost_usd=result.cost.usd,
        # Retrieved by the prompt's embedding, which the retrieval computed (ReasoningBank).
        memory_key="query",
    )
