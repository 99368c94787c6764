"""The typed hops of the request path: one client protocol per service an environment hosts,
with pydantic requests and responses, so that mypy checks every hop of the loop and the same
models travel in-process and over HTTP.

Each protocol has two implementations: in-process (`federation.receiver`, the embedded default)
and networked (`federation.http_client`, HTTP between environments). The orchestrator never
sees which one it holds.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from trifecta.context.deltas import Delta, DeltaResult
from trifecta.context.learn_queue import LearnTicket
from trifecta.context.learning import LearnResult
from trifecta.context.models import (
    DomainStats,
    MemoryQuery,
    MemorySearchResult,
    PlaybookView,
    Retrieval,
    RetrieveRequest,
)
from trifecta.context.trajectory import Trajectory
from trifecta.generative.service import GenerativeRequest, GenerativeResponse
from trifecta.tensorlogic.service import RuleAnswer

# The services an environment can host.
Service = Literal["cognitive", "context", "edge", "generative", "tensorlogic"]
COGNITIVE: Final = "cognitive"
CONTEXT: Final = "context"
EDGE: Final = "edge"
GENERATIVE: Final = "generative"
RULES: Final = "tensorlogic"
SERVICES: tuple[Service, ...] = (COGNITIVE, CONTEXT, EDGE, GENERATIVE, RULES)
MAX_PROMPT_CHARS = 8192


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- cognitive -----------------------------------------------------------------------------
class CompleteRequest(_Model):
    """One capsule prompt for the escalation cascade of an environment's serving layer."""

    capsule_id: str = Field(min_length=1, max_length=128)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: int = Field(default=16, ge=1, le=512)
    start_tier: str | None = Field(default=None, description="start on this tier (a rule)")


class TierDecision(_Model):
    """What one tier of the cascade did with the request."""

    tier: str
    escalated: bool
    signal: float
    threshold: float | None
    prompt_tokens: int
    completion_tokens: int


class CompleteResponse(_Model):
    text: str
    tokens: list[str]
    entropies: list[float]
    finish_reason: str
    decisions: list[TierDecision]
    environment: str = Field(description="the environment whose serving layer answered")


class CognitiveClient(Protocol):
    def tiers(self) -> list[str]: ...

    def complete(self, request: CompleteRequest) -> CompleteResponse: ...


# -- context -------------------------------------------------------------------------------
class ContextClient(Protocol):
    """A domain's ACE playbook and ReasoningBank, as the shard's environment serves them."""

    def retrieve(self, capsule_id: str, request: RetrieveRequest) -> Retrieval: ...

    def learn(self, trajectory: Trajectory) -> LearnResult: ...

    def submit(self, trajectory: Trajectory) -> LearnTicket:
        """Queue the trajectory for learning; returns once it is durably stored."""
        ...

    def drain(self, timeout_s: float) -> bool:
        """Wait until the environment's learning queue is empty (False: timed out)."""
        ...

    def apply_delta(self, capsule_id: str, delta: Delta) -> DeltaResult: ...

    def playbook(self, capsule_id: str) -> PlaybookView: ...

    def stats(self, capsule_id: str) -> DomainStats: ...

    def search_memories(self, capsule_id: str, query: MemoryQuery) -> MemorySearchResult: ...


# -- edge ----------------------------------------------------------------------------------
class OffloadRequest(_Model):
    capsule_id: str = Field(min_length=1, max_length=128)
    prompts: list[str] = Field(min_length=1, max_length=64)
    max_new_tokens: int = Field(default=16, ge=1, le=512)


class EdgeGeneration(_Model):
    text: str
    tokens: list[str]
    entropies: list[float]
    prompt_tokens: int
    completion_tokens: int


class OffloadResponse(_Model):
    offloaded: bool
    reason: str
    detail: str
    node: str | None = None
    generations: list[EdgeGeneration] = Field(default_factory=list)


class EdgeClient(Protocol):
    def offload(self, request: OffloadRequest) -> OffloadResponse: ...


# -- generative ----------------------------------------------------------------------------
class GenerativeFeedback(_Model):
    """The verdict on a generative answer, with the experts its tokens were routed to."""

    capsule_id: str = Field(min_length=1, max_length=128)
    expert_load: list[list[int]]
    success: bool


class GenerativeClient(Protocol):
    """The RND1-style MoE diffusion model, each capsule with its expert mask and biases."""

    def complete(self, request: GenerativeRequest) -> GenerativeResponse: ...

    def feedback(self, feedback: GenerativeFeedback) -> int:
        """Apply the outcome rule to the capsule's router biases; returns their new version."""
        ...


# -- Tensor Logic rule queries --------------------------------------------------------------
class RuleRequest(_Model):
    capsule_id: str = Field(min_length=1, max_length=128)
    program: str = Field(min_length=1, max_length=64, description="the capsule's program")
    query: str = Field(min_length=3, max_length=1000, description="e.g. Downstream[v1, p3]?")
    symbolic_only: bool = Field(
        default=False, description="answer only when the Boolean program settles the query"
    )


class RuleResponse(_Model):
    settled: bool = Field(description="False: the query needs embedding mode, not answered")
    answer: RuleAnswer | None = None


class RuleClient(Protocol):
    def query(self, request: RuleRequest) -> RuleResponse: ...


# -- what an environment served (its own record, read by tests and `trifecta status`) ------
class ServedRecord(_Model):
    environment: str
    service: Service
    method: str
    capsule_id: str
    capsule_kind: str
    ok: bool
    detail: str = ""


class EnvironmentHealth(_Model):
    environment: str
    kind: str
    jurisdiction: str | None
    services: list[Service]
    served: int = Field(description="requests this environment served since it started")
    refused: int = Field(description="requests it refused (placement rule, bad input)")
    edge_nodes: int = 0
