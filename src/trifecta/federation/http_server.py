"""An environment's host over HTTP: the typed hops of `federation.services` as JSON routes.

`trifecta env serve` mounts this router; `federation.http_client` is its client. The routes are
the protocols one for one (a POST per method, the pydantic models as bodies), so the networked
hop carries exactly what the in-process one does. Peers authenticate with the federation
credential (a bearer token) when one is configured; the receiving host applies the placement
rule and records what it served either way.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import APIRouter, Depends, Header
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
from trifecta.core.errors import Unauthenticated
from trifecta.federation.receiver import EnvironmentHost
from trifecta.federation.services import (
    CompleteRequest,
    CompleteResponse,
    EnvironmentHealth,
    GenerativeFeedback,
    OffloadRequest,
    OffloadResponse,
    RuleRequest,
    RuleResponse,
    ServedRecord,
)
from trifecta.generative.service import GenerativeRequest, GenerativeResponse

PREFIX = "/federation/v1"
CapsuleIdField = Field(min_length=1, max_length=128)


class CapsuleCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    capsule_id: str = CapsuleIdField


class RetrieveCall(CapsuleCall):
    request: RetrieveRequest


class DeltaCall(CapsuleCall):
    delta: Delta


class SearchCall(CapsuleCall):
    query: MemoryQuery


class DrainCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: float = Field(default=30.0, gt=0, le=600)


class BiasVersionNumber(BaseModel):
    version: int


class DrainResult(BaseModel):
    drained: bool = Field(description="False: the queue still held rows when the time was up")


def peer_auth(credential: str | None) -> Callable[[str | None], None]:
    """A FastAPI dependency: the peer must present the federation credential (if set)."""

    def check(authorization: str | None = Header(default=None)) -> None:
        if credential is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, credential):
            raise Unauthenticated(
                "a federation peer must present the federation credential", field="authorization"
            )

    return check


def federation_router(host: EnvironmentHost, *, credential: str | None = None) -> APIRouter:
    router = APIRouter(
        prefix=PREFIX, tags=["federation"], dependencies=[Depends(peer_auth(credential))]
    )
    cognitive, context, edge = host.cognitive_client(), host.context_client(), host.edge_client()
    generative, rules = host.generative_client(), host.rules_client()

    @router.get("/health")
    def health() -> EnvironmentHealth:
        return host.health()

    @router.get("/served")
    def served(limit: int = 10_000) -> list[ServedRecord]:
        """This environment's own record of the hops it served or refused (newest last)."""
        return host.log.records()[-max(0, limit) :]

    @router.get("/cognitive/tiers")
    def tiers() -> list[str]:
        return cognitive.tiers()

    @router.post("/cognitive/complete")
    def complete(body: CompleteRequest) -> CompleteResponse:
        return cognitive.complete(body)

    @router.post("/context/retrieve")
    def retrieve(body: RetrieveCall) -> Retrieval:
        return context.retrieve(body.capsule_id, body.request)

    @router.post("/context/learn")
    def learn(body: Trajectory) -> LearnResult:
        return context.learn(body)

    @router.post("/context/submit")
    def submit(body: Trajectory) -> LearnTicket:
        return context.submit(body)

    @router.post("/context/drain")
    def drain(body: DrainCall) -> DrainResult:
        return DrainResult(drained=context.drain(body.timeout_s))

    @router.post("/context/apply_delta")
    def apply_delta(body: DeltaCall) -> DeltaResult:
        return context.apply_delta(body.capsule_id, body.delta)

    @router.post("/context/playbook")
    def playbook(body: CapsuleCall) -> PlaybookView:
        return context.playbook(body.capsule_id)

    @router.post("/context/stats")
    def stats(body: CapsuleCall) -> DomainStats:
        return context.stats(body.capsule_id)

    @router.post("/context/search_memories")
    def search_memories(body: SearchCall) -> MemorySearchResult:
        return context.search_memories(body.capsule_id, body.query)

    @router.post("/generative/complete")
    def generative_complete(body: GenerativeRequest) -> GenerativeResponse:
        return generative.complete(body)

    @router.post("/generative/feedback")
    def generative_feedback(body: GenerativeFeedback) -> BiasVersionNumber:
        return BiasVersionNumber(version=generative.feedback(body))

    @router.post("/tensorlogic/query")
    def rule_query(body: RuleRequest) -> RuleResponse:
        return rules.query(body)

    @router.post("/edge/offload")
    def offload(body: OffloadRequest) -> OffloadResponse:
        return edge.offload(body)

    return router
