"""A trajectory: what happened when one request was served, as `learn` takes it.

The orchestrator fills one from a served request: the task, the answer, who judged it and how,
the path through the layers and tiers with each step's signals, and the playbook bullets and
memories that were in context. Nothing here is free text the shipped models must read.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from trifecta.context.deltas import OP_ID
from trifecta.context.models import BULLET_ID, MEMORY_ID, Outcome
from trifecta.fleet.capsules import SLUG

BulletId = Annotated[str, Field(pattern=BULLET_ID)]
MemoryId = Annotated[str, Field(pattern=MEMORY_ID)]


class TrajectoryStep(BaseModel):
    """One hop of the request: a layer (and tier or node) with its own signals."""

    model_config = ConfigDict(extra="forbid")

    layer: str = Field(min_length=1, max_length=32, description="edge, cognitive, generative, ...")
    tier: str | None = Field(default=None, max_length=64, description="small, large, a node name")
    mean_entropy: float | None = Field(default=None, ge=0, description="nats per generated token")
    max_entropy: float | None = Field(default=None, ge=0)
    tokens: int = Field(default=0, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)
    escalated: bool = Field(default=False, description="this step handed the request onwards")
    answer: str | None = Field(default=None, max_length=2000, description="this step's answer")


class Trajectory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # At most 80 characters: op ids the curator derives from it must stay within 120.
    id: str = Field(
        default_factory=lambda: "traj-" + uuid.uuid4().hex, pattern=OP_ID, max_length=80
    )
    capsule_id: str = Field(pattern=SLUG)
    domain: str | None = Field(default=None, pattern=SLUG, description="must be the capsule's")
    task_id: str | None = Field(default=None, max_length=64)
    task_kind: str | None = Field(default=None, max_length=32, description="e.g. lookup_add")
    difficulty: int | None = Field(default=None, ge=1, le=10)
    prompt: str = Field(min_length=1, max_length=8000)
    answer: str | None = Field(default=None, max_length=8000)
    outcome: Outcome = "unknown"
    judge: Literal["verifier", "client", "none"] = Field(
        default="none", description="who decided the outcome"
    )
    verdict_detail: str | None = Field(
        default=None, max_length=2000, description="e.g. expected 58"
    )
    steps: list[TrajectoryStep] = Field(default_factory=list, max_length=32)
    bullet_ids: list[BulletId] = Field(
        default_factory=list, max_length=200, description="playbook bullets the answer used"
    )
    memory_ids: list[MemoryId] = Field(default_factory=list, max_length=200)
    latency_ms: float | None = Field(default=None, ge=0)
    cost_usd: float | None = Field(default=None, ge=0)
    created_at: float = Field(default_factory=time.time)
    memory_key: Literal["text", "query"] = Field(
        default="text",
        description="what its memory is retrieved by: the memory text's embedding, or the "
        "prompt's (ReasoningBank's reference retrieval; the loop's requests ask for it)",
    )

    @property
    def path(self) -> str:
        """`edge -> cognitive/small -> cognitive/large`."""
        hops = [s.layer + (f"/{s.tier}" if s.tier else "") for s in self.steps]
        return " -> ".join(hops) if hops else "unrecorded path"

    @property
    def mean_entropy(self) -> float | None:
        values = [s.mean_entropy for s in self.steps if s.mean_entropy is not None]
        return sum(values) / len(values) if values else None
