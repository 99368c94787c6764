"""What crosses an A2A hop: a capsule task, its outcome, and a delegated task's state.

The orchestrator sits above the federation, so these mirror (not import) its `TaskRequest`
and `TaskResult`: the environment server converts between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trifecta.fleet.capsules import Capsule

TaskState = Literal[
    "submitted", "working", "completed", "failed", "canceled", "rejected", "unknown"
]
TERMINAL_STATES: frozenset[TaskState] = frozenset({"completed", "failed", "canceled", "rejected"})
MAX_PROMPT_CHARS = 2000


class CapsuleTask(BaseModel):
    """One task of a capsule, delegated to another environment."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(
        default=18, ge=1, le=256, description="completion tokens at most (a worked answer)"
    )
    request_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,40}$", description="idempotency key"
    )


class CapsuleTaskOutcome(BaseModel):
    """What the receiving environment answered."""

    model_config = ConfigDict(extra="forbid")

    answer: str | None
    environment: str = Field(description="the environment that produced the answer")
    route: str = Field(default="", description="cache, edge or cognitive")
    path: list[str] = Field(default_factory=list)
    verified: bool | None = None
    cost_usd: float = Field(default=0.0, ge=0)
    latency_ms: float = Field(default=0.0, ge=0)
    task_id: str | None = Field(default=None, description="the receiver's own request id")


class DelegatedTask(BaseModel):
    """A delegated task as the sender sees it: the peer's A2A task and its outcome."""

    peer: str = Field(description="the peer environment's name")
    capsule_id: str
    task_id: str
    context_id: str
    state: TaskState
    outcome: CapsuleTaskOutcome | None = None
    message: str = Field(default="", description="the peer's status text (why refused/failed)")

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


#: Runs a capsule task in this environment: (capsule id, task) -> outcome. Blocking; the A2A
#: server calls it in a worker thread. Raises `TrifectaError` for an expected failure.
CapsuleTaskHandler = Callable[[str, CapsuleTask], CapsuleTaskOutcome]
#: A capsule by id (e.g. `CapsuleRegistry.get`); raises `NotFound` for an unknown id.
CapsuleLookup = Callable[[str], Capsule]
