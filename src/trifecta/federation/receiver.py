"""The receiving side of one environment: the services the topology places there, behind the
one placement rule and the environment's own record of what it served.

`EnvironmentHost` is what answers a hop, whether the hop arrived in-process (the embedded
default hands these clients to the orchestrator directly) or over HTTP (`federation.http_server`
puts the same host behind FastAPI). Either way the receiver checks `Environment.admits(capsule)`
itself before serving, so a sender that is wrong, or hostile, still cannot make a reserved or
disallowed site serve a capsule; and the receiver's `ServedLog` is the evidence tests read.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from trifecta.cognitive.backends.base import SamplingOptions
from trifecta.cognitive.cascade import CascadeGeneration
from trifecta.cognitive.serving.auto import AutoModel
from trifecta.cognitive.serving.tenants import Tenant
from trifecta.context.deltas import Delta, DeltaResult
from trifecta.context.facade import ContextService
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
from trifecta.core.errors import InvalidInput, SovereigntyViolation
from trifecta.core.heap_report import track
from trifecta.core.settings import get_settings
from trifecta.edge.mesh import EdgeMesh
from trifecta.federation.rules import RuleBook
from trifecta.federation.services import (
    COGNITIVE,
    CONTEXT,
    EDGE,
    GENERATIVE,
    RULES,
    CompleteRequest,
    CompleteResponse,
    EdgeGeneration,
    EnvironmentHealth,
    GenerativeFeedback,
    OffloadRequest,
    OffloadResponse,
    RuleRequest,
    RuleResponse,
    ServedRecord,
    Service,
    TierDecision,
)
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import Environment
from trifecta.generative.service import GenerativeRequest, GenerativeResponse, GenerativeService

CapsuleLookup = Callable[[str], Capsule]


def refuse_unless_admitted(environment: Environment, capsule: Capsule) -> None:
    """The one placement rule, applied by whoever is about to send or serve a hop."""
    if not environment.admits(capsule):
        why = (
            f"reserved for {', '.join(environment.reserved_for)} capsules"
            if environment.reserved_for and capsule.kind not in environment.reserved_for
            else "outside the places it allows"
        )
        raise SovereigntyViolation(
            f"capsule {capsule.id!r} may not be served in environment {environment.name!r} ({why})",
            field="environment",
        )


# A kept record: environment, service, method, capsule id, capsule kind, ok, detail.
_Row = tuple[str, Service, str, str, str, bool, str]


class ServedLog:
    """What this environment served or refused, in order (bounded).

    Each record is kept as a tuple of its field values (about 110 bytes, the strings shared
    with the caller's) rather than as the pydantic model (about 1.1 KB with its dict and
    fields-set): a soak saw the full log's 100,000 models as the largest Python growth of a
    long-lived server (about 3 per task), 110 MB by the time the log is full. It keeps
    `served_log_records` (2,000 by default: about 0.2 MB)."""

    def __init__(self, limit: int | None = None):
        # The bound: `served_log_records` (oldest first out); the counts cover every record.
        limit = limit if limit is not None else get_settings().served_log_records
        self._records: deque[_Row] = deque(maxlen=limit)
        self._lock = threading.Lock()
        self.served = 0
        self.refused = 0
        track("federation served log (records)", self)

    @property
    def entries(self) -> int:
        return len(self._records)

    @property
    def bound(self) -> int:
        return self._records.maxlen or 0

    def add(self, record: ServedRecord) -> None:
        r = record
        row = (r.environment, r.service, r.method, r.capsule_id, r.capsule_kind, r.ok, r.detail)
        with self._lock:
            self._records.append(row)
            if record.ok:
                self.served += 1
            else:
                self.refused += 1

    def records(self) -> list[ServedRecord]:
        with self._lock:
            rows = list(self._records)
        # Validated when added: rebuilt without validating again.
        return [
            ServedRecord.model_construct(
                environment=e, service=sv, method=m, capsule_id=c, capsule_kind=k, ok=ok, detail=d
            )
            for e, sv, m, c, k, ok, d in rows
        ]


@dataclass
class EnvironmentServices:
    """The layer objects an environment hosts (None: not hosted there)."""

    cognitive: AutoModel | None = None
    context: ContextService | None = None
    edge: EdgeMesh | None = None
    generative: GenerativeService | None = None
    rules: RuleBook | None = None

    def names(self) -> list[Service]:
        present: list[Service] = []
        if self.cognitive is not None:
            present.append(COGNITIVE)
        if self.context is not None:
            present.append(CONTEXT)
        if self.edge is not None:
            present.append(EDGE)
        if self.generative is not None:
            present.append(GENERATIVE)
        if self.rules is not None:
            present.append(RULES)
        return present


class EnvironmentHost:
    def __init__(
        self,
        environment: Environment,
        services: EnvironmentServices,
        capsule_of: CapsuleLookup,
        log: ServedLog | None = None,
    ):
        self.environment = environment
        self.services = services
        self.capsule_of = capsule_of
        self.log = log or ServedLog()

    # -- the receiver's check ------------------------------------------------------------
    def admit(self, capsule_id: str, service: Service, method: str) -> Capsule:
        capsule = self.capsule_of(capsule_id)
        try:
            refuse_unless_admitted(self.environment, capsule)
            if service not in self.services.names():
                raise InvalidInput(
                    f"environment {self.environment.name!r} hosts no {service!r}",
                    field="service",
                    allowed=self.services.names(),
                )
        except (SovereigntyViolation, InvalidInput) as exc:
            self._record(capsule, service, method, ok=False, detail=exc.one_line())
            raise
        self._record(capsule, service, method, ok=True)
        return capsule

    def _record(
        self, capsule: Capsule, service: Service, method: str, *, ok: bool, detail: str = ""
    ) -> None:
        self.log.add(
            ServedRecord(
                environment=self.environment.name,
                service=service,
                method=method,
                capsule_id=capsule.id,
                capsule_kind=capsule.kind,
                ok=ok,
                detail=detail,
            )
        )

    def health(self) -> EnvironmentHealth:
        mesh = self.services.edge
        return EnvironmentHealth(
            environment=self.environment.name,
            kind=self.environment.kind,
            jurisdiction=self.environment.jurisdiction,
            services=self.services.names(),
            served=self.log.served,
            refused=self.log.refused,
            edge_nodes=mesh.healthy_count() if mesh is not None else 0,
        )

    # -- typed clients over this host ----------------------------------------------------
    def cognitive_client(self) -> HostedCognitive:
        return HostedCognitive(self)

    def context_client(self) -> HostedContext:
        return HostedContext(self)

    def edge_client(self) -> HostedEdge:
        return HostedEdge(self)

    def generative_client(self) -> HostedGenerative:
        return HostedGenerative(self)

    def rules_client(self) -> HostedRules:
        return HostedRules(self)


class HostedCognitive:
    """The escalation cascade of this environment's serving layer (fair queuing, continuous
    batching, the tiers loaded once). Quotas are admitted at the front door, not here."""

    def __init__(self, host: EnvironmentHost):
        self.host = host

    def _auto(self) -> AutoModel:
        auto = self.host.services.cognitive
        if auto is None:
            raise InvalidInput("no cognitive layer here", field="service")
        return auto

    def tiers(self) -> list[str]:
        return [t.name for t in self._auto().tiers]

    def complete(self, request: CompleteRequest) -> CompleteResponse:
        capsule = self.host.admit(request.capsule_id, COGNITIVE, "complete")
        (result,) = self._auto().generate(
            Tenant.of(capsule),
            [request.prompt],
            SamplingOptions(max_new_tokens=request.max_new_tokens),
            cancelled=threading.Event(),
            start_tier=request.start_tier,
        )
        return _response(result.generation, self.host.environment.name)


def _response(generation: CascadeGeneration, environment: str) -> CompleteResponse:
    return CompleteResponse(
        text=generation.text,
        tokens=list(generation.tokens),
        entropies=list(generation.entropies),
        finish_reason=generation.finish_reason,
        decisions=[
            TierDecision(
                tier=d.tier,
                escalated=d.escalated,
                signal=d.signal,
                threshold=d.threshold,
                prompt_tokens=d.prompt_tokens,
                completion_tokens=d.completion_tokens,
            )
            for d in generation.decisions
        ],
        environment=environment,
    )


class HostedContext:
    """The context shards this environment homes (the context service routes by domain)."""

    def __init__(self, host: EnvironmentHost):
        self.host = host

    def _service(self, capsule_id: str, method: str) -> ContextService:
        self.host.admit(capsule_id, CONTEXT, method)
        service = self.host.services.context
        assert service is not None  # admit() refused a host without one
        return service

    def retrieve(self, capsule_id: str, request: RetrieveRequest) -> Retrieval:
        return self._service(capsule_id, "retrieve").retrieve(capsule_id, request)

    def learn(self, trajectory: Trajectory) -> LearnResult:
        return self._service(trajectory.capsule_id, "learn").learn(trajectory)

    def submit(self, trajectory: Trajectory) -> LearnTicket:
        return self._service(trajectory.capsule_id, "submit").submit(trajectory)

    def drain(self, timeout_s: float) -> bool:
        service = self.host.services.context
        if service is None:
            raise InvalidInput("no context layer here", field="service")
        return service.drain(timeout_s)

    def apply_delta(self, capsule_id: str, delta: Delta) -> DeltaResult:
        return self._service(capsule_id, "apply_delta").apply_delta(capsule_id, delta)

    def playbook(self, capsule_id: str) -> PlaybookView:
        return self._service(capsule_id, "playbook").playbook(capsule_id)

    def stats(self, capsule_id: str) -> DomainStats:
        return self._service(capsule_id, "stats").stats(capsule_id)

    def search_memories(self, capsule_id: str, query: MemoryQuery) -> MemorySearchResult:
        return self._service(capsule_id, "search_memories").search_memories(capsule_id, query)


class HostedEdge:
    """This edge site's mesh: light requests on a healthy ternary node, or a reason why not."""

    def __init__(self, host: EnvironmentHost):
        self.host = host

    def offload(self, request: OffloadRequest) -> OffloadResponse:
        capsule = self.host.admit(request.capsule_id, EDGE, "offload")
        mesh = self.host.services.edge
        assert mesh is not None
        result = mesh.offload(capsule, request.prompts, max_new_tokens=request.max_new_tokens)
        return OffloadResponse(
            offloaded=result.offloaded,
            reason=str(result.reason),
            detail=result.detail,
            node=result.node,
            generations=[
                EdgeGeneration(
                    text=g.text,
                    tokens=list(g.tokens),
                    entropies=list(g.entropies),
                    prompt_tokens=g.prompt_tokens,
                    completion_tokens=g.completion_tokens,
                )
                for g in result.generations or []
            ],
        )


class HostedGenerative:
    """This environment's generative layer: one model, each capsule decoding with its own
    expert mask and router biases."""

    def __init__(self, host: EnvironmentHost):
        self.host = host

    def _service(self, capsule_id: str, method: str) -> GenerativeService:
        self.host.admit(capsule_id, GENERATIVE, method)
        service = self.host.services.generative
        assert service is not None  # admit() refused a host without one
        return service

    def complete(self, request: GenerativeRequest) -> GenerativeResponse:
        return self._service(request.capsule_id, "complete").complete(request)

    def feedback(self, feedback: GenerativeFeedback) -> int:
        service = self._service(feedback.capsule_id, "feedback")
        return service.feedback(feedback.capsule_id, feedback.expert_load, feedback.success).version


class HostedRules:
    """Rule queries on a capsule's Tensor Logic program: symbolically and exactly when the
    Boolean program settles them; otherwise (unless only symbolic answers are asked for, as an
    edge site is) in embedding mode with a confidence."""

    def __init__(self, host: EnvironmentHost):
        self.host = host

    def query(self, request: RuleRequest) -> RuleResponse:
        capsule = self.host.admit(request.capsule_id, RULES, "query")
        if capsule.program != request.program:
            raise InvalidInput(
                f"capsule {capsule.id!r} owns no program {request.program!r}", field="program"
            )
        book = self.host.services.rules
        assert book is not None
        if request.symbolic_only and not book.settles(request.program, request.query):
            return RuleResponse(settled=False)
        return RuleResponse(settled=True, answer=book.answer(request.program, request.query))
