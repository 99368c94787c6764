"""The offload policy: when a request goes to the edge, and what the caller gets back.

A request is offloaded when (1) every prompt is light by the task-weight estimate of the task
family (`core.tasks.is_light`: grades 1-2) and the edge model's measured accuracy on its grade
(carried by the model artifact) meets the capsule's quality target, (2) the capsule allows the
environment of at least one node (`Capsule.allows`, the one sovereignty rule), and (3) such a
node is healthy, serves the mesh's current model and has capacity (when every such node is
full, the mesh may wait a bounded time for one of them: `EdgeMesh`). Otherwise, or when every
node tried fails mid-request, the result says "not offloaded" with the reason, and the caller
goes to the cloud tier; the caller never sees an error from the edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from trifecta.core.protocols import Generation
from trifecta.core.tasks import estimate_difficulty, is_light
from trifecta.fleet.capsules import Capsule, Place

Reason = Literal[
    "offloaded",
    "not_light",
    "below_quality",
    "no_allowed_node",
    "no_healthy_node",
    "no_capacity",
    "nodes_failed",
    "rejected_by_node",
    "invalid_request",
]


@dataclass(frozen=True)
class NodeView:
    """What the policy reads of one node (a snapshot taken by the mesh)."""

    key: str
    environment: Place
    healthy: bool
    serves_current_model: bool
    in_flight: int
    capacity: int

    @property
    def has_capacity(self) -> bool:
        return self.in_flight < self.capacity

    @property
    def load(self) -> float:
        return self.in_flight / self.capacity


@dataclass(frozen=True)
class OffloadDecision:
    offload: bool
    reason: Reason
    detail: str
    candidates: tuple[str, ...] = ()  # eligible nodes, least loaded first
    # With `no_capacity`: the allowed, healthy, current nodes that are all full, the only
    # ones a request may wait for (the mesh's bounded wait; the allowed-place rule holds).
    full: tuple[str, ...] = ()


@dataclass
class OffloadResult:
    offloaded: bool
    reason: Reason
    detail: str
    node: str | None = None
    generations: list[Generation] | None = None
    attempts: list[str] = field(default_factory=list)  # "node: what went wrong", in order


def decide(
    capsule: Capsule | None,
    prompts: Sequence[str],
    nodes: Sequence[NodeView],
    accuracy: Mapping[int, float] | None = None,
) -> OffloadDecision:
    """The policy itself, on a snapshot of the nodes (pure: no I/O). `accuracy` is the edge
    model's held-out accuracy per grade; without it, or without a capsule, quality is not gated."""
    heavy = [p for p in prompts if not is_light(p)]
    if heavy or not prompts:
        return OffloadDecision(
            False, "not_light", f"not a light task: {heavy[0][:40]!r}" if heavy else "no prompts"
        )
    if capsule is not None and accuracy:
        for prompt in prompts:
            grade = estimate_difficulty(prompt)
            if accuracy.get(grade, 0.0) < capsule.quality_target:
                return OffloadDecision(
                    False,
                    "below_quality",
                    f"edge accuracy on grade {grade} is {accuracy.get(grade, 0.0):.0%}, "
                    f"under capsule {capsule.id!r}'s target {capsule.quality_target:.0%}",
                )
    allowed = [n for n in nodes if capsule is None or capsule.allows(n.environment)]
    if not allowed:
        who = f"capsule {capsule.id!r}" if capsule else "request"
        return OffloadDecision(
            False, "no_allowed_node", f"{who} allows none of the {len(nodes)} nodes' environments"
        )
    healthy = [n for n in allowed if n.healthy and n.serves_current_model]
    if not healthy:
        return OffloadDecision(
            False, "no_healthy_node", f"none of {len(allowed)} allowed nodes is healthy and current"
        )
    free = sorted((n for n in healthy if n.has_capacity), key=lambda n: n.load)
    if not free:
        return OffloadDecision(
            False,
            "no_capacity",
            f"all {len(healthy)} healthy nodes are at capacity",
            full=tuple(n.key for n in healthy),
        )
    return OffloadDecision(
        True, "offloaded", f"{len(free)} nodes eligible", tuple(n.key for n in free)
    )
