"""The mock bridge: fault injection around any bridge (the playbook's "Local: Mac Dev
Environment (Mock Bridge)").

`MockBridge(inner)` hands out the inner bridge's typed clients wrapped so that every call first
applies the environment's injected faults (down, added latency, random failures) and records
the hop, then runs the real call. The inner bridge is the in-process one on the embedded
default and the HTTP one in a federated run, so the same faults can be injected into both. A
test or a run can change the faults at any time (`set_fault`) to take an environment down under
load.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
from trifecta.core.errors import Unavailable, invalid_input_from
from trifecta.core.heap_report import track
from trifecta.core.settings import get_settings
from trifecta.federation.bridge import Bridge, Hop
from trifecta.federation.services import (
    CognitiveClient,
    CompleteRequest,
    CompleteResponse,
    ContextClient,
    EdgeClient,
    EnvironmentHealth,
    GenerativeClient,
    GenerativeFeedback,
    OffloadRequest,
    OffloadResponse,
    RuleClient,
    RuleRequest,
    RuleResponse,
    ServedRecord,
    Service,
)
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import Environment
from trifecta.generative.service import GenerativeRequest, GenerativeResponse

T = TypeVar("T")


class Fault(BaseModel):
    """What to inject into every call into one environment."""

    model_config = ConfigDict(extra="forbid")

    down: bool = False
    latency_ms: float = Field(default=0.0, ge=0, le=60_000)
    failure_rate: float = Field(default=0.0, ge=0, le=1)

    def describe(self) -> str:
        parts = ["down"] if self.down else []
        if self.latency_ms:
            parts.append(f"+{self.latency_ms:g} ms")
        if self.failure_rate:
            parts.append(f"{100 * self.failure_rate:g}% failures")
        return ", ".join(parts) or "none"


class MockBridge:
    def __init__(self, inner: Bridge, *, faults: dict[str, Fault] | None = None, seed: int = 0):
        self.inner = inner
        self.topology = inner.topology
        self._faults: dict[str, Fault] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        # The sender's trace, bounded (`hop_log_hops`): a long run must not grow it forever.
        self.hops: deque[Hop] = deque(maxlen=get_settings().hop_log_hops)
        track("federation hop log (hops)", self)
        for name, fault in (faults or {}).items():
            self.set_fault(name, fault)

    # -- faults --------------------------------------------------------------------------
    def set_fault(
        self,
        environment: str,
        fault: Fault | None = None,
        *,
        down: bool | None = None,
        latency_ms: float | None = None,
        failure_rate: float | None = None,
    ) -> None:
        """Replace (or, with keyword arguments, update) the faults injected into `environment`."""
        self.topology.environment(environment)  # NotFound names the environments
        base = fault or self._faults.get(environment, Fault())
        changes = {
            k: v
            for k, v in (("down", down), ("latency_ms", latency_ms), ("failure_rate", failure_rate))
            if v is not None
        }
        try:
            self._faults[environment] = Fault.model_validate(base.model_dump() | changes)
        except ValidationError as exc:
            raise invalid_input_from(exc, prefix="fault.") from None

    def fault(self, environment: str) -> Fault:
        return self._faults.get(environment, Fault())

    def faults(self) -> dict[str, Fault]:
        return {name: f for name, f in self._faults.items() if f != Fault()}

    # -- the Bridge interface ------------------------------------------------------------
    def environments_hosting(self, service: Service) -> list[Environment]:
        return self.inner.environments_hosting(service)

    def is_up(self, environment: str) -> bool:
        return not self.fault(environment).down and self.inner.is_up(environment)

    def cognitive(self, capsule: Capsule, environment: str) -> CognitiveClient:
        return _FaultyCognitive(
            self, capsule, environment, self.inner.cognitive(capsule, environment)
        )

    def context(self, capsule: Capsule, environment: str) -> ContextClient:
        return _FaultyContext(self, capsule, environment, self.inner.context(capsule, environment))

    def edge(self, capsule: Capsule, environment: str) -> EdgeClient:
        return _FaultyEdge(self, capsule, environment, self.inner.edge(capsule, environment))

    def generative(self, capsule: Capsule, environment: str) -> GenerativeClient:
        inner = self.inner.generative(capsule, environment)
        return _FaultyGenerative(self, capsule, environment, inner)

    def rules(self, capsule: Capsule, environment: str) -> RuleClient:
        return _FaultyRules(self, capsule, environment, self.inner.rules(capsule, environment))

    def health(self, environment: str) -> EnvironmentHealth:
        return self._call(
            None, environment, "health", "health", lambda: self.inner.health(environment)
        )

    def served(self, environment: str) -> list[ServedRecord]:
        return self.inner.served(environment)

    def close(self) -> None:
        self.inner.close()

    # -- dispatch ------------------------------------------------------------------------
    def _call(
        self,
        capsule: Capsule | None,
        environment: str,
        service: str,
        method: str,
        call: Callable[[], T],
    ) -> T:
        fault = self.fault(environment)
        ok = False
        try:
            if fault.down:
                raise Unavailable(f"environment {environment!r} is down", field="environment")
            if fault.latency_ms:
                time.sleep(fault.latency_ms / 1000)
            if fault.failure_rate:
                with self._lock:
                    failed = self._rng.random() < fault.failure_rate
                if failed:
                    raise Unavailable(
                        f"call into {environment!r} failed (injected)", field="environment"
                    )
            result = call()
            ok = True
            return result
        finally:
            if capsule is not None:
                self.hops.append(Hop(capsule.id, environment, service, method, ok))

    @property
    def entries(self) -> int:
        """Hops in the trace."""
        return len(self.hops)

    @property
    def bound(self) -> int:
        return self.hops.maxlen or 0

    def hops_of(self, capsule_ids: Iterable[str]) -> list[Hop]:
        wanted = set(capsule_ids)
        return [h for h in list(self.hops) if h.capsule_id in wanted]


class _Faulty:
    def __init__(self, bridge: MockBridge, capsule: Capsule, environment: str, service: str):
        self.bridge, self.capsule = bridge, capsule
        self.environment, self.service = environment, service

    def _call(self, method: str, call: Callable[[], T]) -> T:
        return self.bridge._call(self.capsule, self.environment, self.service, method, call)


class _FaultyCognitive(_Faulty):
    def __init__(self, bridge: MockBridge, capsule: Capsule, env: str, inner: CognitiveClient):
        super().__init__(bridge, capsule, env, "cognitive")
        self.inner = inner

    def tiers(self) -> list[str]:
        return self._call("tiers", self.inner.tiers)

    def complete(self, request: CompleteRequest) -> CompleteResponse:
        return self._call("complete", lambda: self.inner.complete(request))


class _FaultyContext(_Faulty):
    def __init__(self, bridge: MockBridge, capsule: Capsule, env: str, inner: ContextClient):
        super().__init__(bridge, capsule, env, "context")
        self.inner = inner

    def retrieve(self, capsule_id: str, request: RetrieveRequest) -> Retrieval:
        return self._call("retrieve", lambda: self.inner.retrieve(capsule_id, request))

    def learn(self, trajectory: Trajectory) -> LearnResult:
        return self._call("learn", lambda: self.inner.learn(trajectory))

    def submit(self, trajectory: Trajectory) -> LearnTicket:
        return self._call("submit", lambda: self.inner.submit(trajectory))

    def drain(self, timeout_s: float) -> bool:
        return self._call("drain", lambda: self.inner.drain(timeout_s))

    def apply_delta(self, capsule_id: str, delta: Delta) -> DeltaResult:
        return self._call("apply_delta", lambda: self.inner.apply_delta(capsule_id, delta))

    def playbook(self, capsule_id: str) -> PlaybookView:
        return self._call("playbook", lambda: self.inner.playbook(capsule_id))

    def stats(self, capsule_id: str) -> DomainStats:
        return self._call("stats", lambda: self.inner.stats(capsule_id))

    def search_memories(self, capsule_id: str, query: MemoryQuery) -> MemorySearchResult:
        return self._call("search_memories", lambda: self.inner.search_memories(capsule_id, query))


class _FaultyEdge(_Faulty):
    def __init__(self, bridge: MockBridge, capsule: Capsule, env: str, inner: EdgeClient):
        super().__init__(bridge, capsule, env, "edge")
        self.inner = inner

    def offload(self, request: OffloadRequest) -> OffloadResponse:
        return self._call("offload", lambda: self.inner.offload(request))


class _FaultyGenerative(_Faulty):
    def __init__(self, bridge: MockBridge, capsule: Capsule, env: str, inner: GenerativeClient):
        super().__init__(bridge, capsule, env, "generative")
        self.inner = inner

    def complete(self, request: GenerativeRequest) -> GenerativeResponse:
        return self._call("complete", lambda: self.inner.complete(request))

    def feedback(self, feedback: GenerativeFeedback) -> int:
        return self._call("feedback", lambda: self.inner.feedback(feedback))


class _FaultyRules(_Faulty):
    def __init__(self, bridge: MockBridge, capsule: Capsule, env: str, inner: RuleClient):
        super().__init__(bridge, capsule, env, "tensorlogic")
        self.inner = inner

    def query(self, request: RuleRequest) -> RuleResponse:
        return self._call("query", lambda: self.inner.query(request))
