"""What goes in and out of the trifecta loop: a capsule's task request and its result."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trifecta.cognitive.scratchpad import ANSWER_TOKENS

Route = Literal["cache", "edge", "cognitive", "generative", "symbolic", "neural"]
MAX_PROMPT_CHARS = 2000


class TaskRequest(BaseModel):
    """One task from a capsule: a prompt of the task family, or any text a real LLM backend
    can answer (the verifier then cannot judge it and the outcome waits for feedback)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: int = Field(
        default=ANSWER_TOKENS,
        ge=1,
        le=256,
        description="completion tokens at most (default: room for a worked answer's steps)",
    )
    request_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,40}$", description="idempotency key"
    )


class Hop(BaseModel):
    """One step of the request's path through the layers."""

    layer: str
    environment: str
    model: str
    ok: bool
    detail: str = ""
    tokens: int = 0
    mean_entropy: float | None = None
    latency_ms: float = 0.0


class ContextUse(BaseModel):
    """What the context layer contributed to this request."""

    environment: str
    domain: str
    version: int
    bullets: list[str] = Field(description="bullet ids retrieved")
    rules: list[str] = Field(description="routing-rule bullet ids that changed the route")
    memories: list[str] = Field(description="memory ids retrieved")
    cache_hit: str | None = Field(
        default=None, description="the memory whose verified answer was reused"
    )


class Cost(BaseModel):
    usd: float
    accelerator_seconds: float
    by_layer: dict[str, float] = Field(description="layer -> USD")


class TaskResult(BaseModel):
    id: str
    capsule_id: str
    prompt: str
    answer: str | None
    route: Route
    path: list[str] = Field(description="e.g. ['edge', 'cognitive/small', 'cognitive/large']")
    environment: str | None = Field(description="where the answer was produced")
    verified: bool | None = Field(description="the task verifier's verdict (None: cannot tell)")
    escalated: bool
    hops: list[Hop]
    context: ContextUse | None
    cost: Cost
    latency_ms: float
    learned: bool = Field(description="the context layer learned from this request")


class Feedback(BaseModel):
    """The client's verdict on an earlier task, for prompts the verifier cannot judge (or to
    overrule it)."""

    model_config = ConfigDict(extra="forbid")

    success: bool
    detail: str | None = Field(default=None, max_length=2000)


class FeedbackResult(BaseModel):
    task_id: str
    capsule_id: str
    outcome: Literal["success", "failure"]
    learned: bool
    playbook_version: int
