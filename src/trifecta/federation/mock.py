"""The mock bridge: every environment of a topology in one process (the playbook's "Local:
Mac Dev Environment (Mock Bridge)").

Services are registered per environment; a client is a proxy whose every method call first
checks the capsule's sovereignty, then the environment's injected faults (down, added
latency, random failures), records the hop, and only then runs the in-process service. A
test or a run can change the faults at any time (`set_fault`) to take an environment down
under load.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import InvalidInput, SovereigntyViolation, Unavailable
from trifecta.federation.bridge import Hop
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import Environment, Topology


class Fault(BaseModel):
    """What to inject into every call into one environment."""

    model_config = ConfigDict(extra="forbid")

    down: bool = False
    latency_ms: float = Field(default=0.0, ge=0)
    failure_rate: float = Field(default=0.0, ge=0, le=1)


class MockBridge:
    def __init__(
        self, topology: Topology, *, faults: dict[str, Fault] | None = None, seed: int = 0
    ):
        self.topology = topology
        self._services: dict[tuple[str, str], object] = {}
        self._faults: dict[str, Fault] = {}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.hops: list[Hop] = []
        self.record_hops = True
        for name, fault in (faults or {}).items():
            self.set_fault(name, fault)

    # -- set-up ------------------------------------------------------------------------
    def host(self, environment: str, service: str, implementation: object) -> None:
        self.topology.environment(environment)  # NotFound names the allowed environments
        self._services[(environment, service)] = implementation

    def set_fault(self, environment: str, fault: Fault | None = None, **changes: Any) -> None:
        """Replace (or, with keyword arguments, update) the faults injected into `environment`."""
        self.topology.environment(environment)
        base = fault or self._faults.get(environment, Fault())
        self._faults[environment] = base.model_copy(update=changes) if changes else base

    def fault(self, environment: str) -> Fault:
        return self._faults.get(environment, Fault())

    # -- the Bridge interface ----------------------------------------------------------
    def environments_hosting(self, service: str) -> list[Environment]:
        return [self.topology.environment(env) for env, svc in self._services if svc == service]

    def hosts(self, environment: str, service: str) -> bool:
        return (environment, service) in self._services

    def is_up(self, environment: str) -> bool:
        return not self.fault(environment).down

    def client(self, capsule: Capsule, environment: str, service: str) -> Any:
        env = self.topology.environment(environment)
        if not capsule.allows(env):
            raise SovereigntyViolation(
                f"capsule {capsule.id!r} may not reach environment {environment!r}",
                field="environment",
            )
        if (environment, service) not in self._services:
            hosted = sorted(svc for e, svc in self._services if e == environment)
            raise InvalidInput(
                f"{environment!r} hosts no {service!r}", field="service", allowed=hosted
            )
        return _Proxy(self, capsule, environment, service)

    # -- dispatch ----------------------------------------------------------------------
    def _dispatch(
        self,
        capsule: Capsule,
        environment: str,
        service: str,
        method: str,
        call: Callable[[Any], Any],
    ) -> Any:
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
            result = call(self._services[(environment, service)])
            ok = True
            return result
        finally:
            if self.record_hops:
                with self._lock:
                    self.hops.append(Hop(capsule.id, environment, service, method, ok))

    def hops_of(self, capsule_ids: Iterable[str]) -> list[Hop]:
        wanted = set(capsule_ids)
        with self._lock:
            return [h for h in self.hops if h.capsule_id in wanted]


class _Proxy:
    """A service seen from one capsule through the bridge: attribute access returns methods
    that go through `MockBridge._dispatch`; plain attributes (a model's `name`) pass through."""

    def __init__(self, bridge: MockBridge, capsule: Capsule, environment: str, service: str):
        self._bridge, self._capsule = bridge, capsule
        self.environment, self.service = environment, service

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._bridge._services[(self.environment, self.service)], name)
        if not callable(target):
            return target

        def method(*args: Any, **kwargs: Any) -> Any:
            return self._bridge._dispatch(
                self._capsule,
                self.environment,
                self.service,
                name,
                lambda impl: getattr(impl, name)(*args, **kwargs),
            )

        return method
