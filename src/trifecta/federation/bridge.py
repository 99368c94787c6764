"""How the orchestrator reaches a service (the cognitive cascade, a context shard, an edge
mesh) in an environment of the topology.

A `Bridge` hands out typed clients (`federation.services`): `InProcessBridge` answers with the
environments' hosts in this process (the embedded default), `HttpBridge`
(`federation.http_client`) with HTTP clients of the same protocols, and `MockBridge` wraps
either with injected faults. Every bridge applies the one placement rule before handing out a
client (`Environment.admits`: the capsule's sovereignty plus the site's `reserved_for`), and the
receiving environment applies it again; no route, fallback included, can carry a request
elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from trifecta.core.errors import InvalidInput
from trifecta.federation.receiver import EnvironmentHost, refuse_unless_admitted
from trifecta.federation.services import (
    CognitiveClient,
    ContextClient,
    EdgeClient,
    EnvironmentHealth,
    GenerativeClient,
    RuleClient,
    ServedRecord,
    Service,
)
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import Environment, Topology


@dataclass(frozen=True)
class Hop:
    """One call a capsule's request made into an environment (the sender's trace)."""

    capsule_id: str
    environment: str
    service: str
    method: str
    ok: bool


class Bridge(Protocol):
    topology: Topology

    def environments_hosting(self, service: Service) -> list[Environment]: ...

    def is_up(self, environment: str) -> bool: ...

    def cognitive(self, capsule: Capsule, environment: str) -> CognitiveClient: ...

    def context(self, capsule: Capsule, environment: str) -> ContextClient: ...

    def edge(self, capsule: Capsule, environment: str) -> EdgeClient: ...

    def generative(self, capsule: Capsule, environment: str) -> GenerativeClient: ...

    def rules(self, capsule: Capsule, environment: str) -> RuleClient: ...

    def health(self, environment: str) -> EnvironmentHealth: ...

    def served(self, environment: str) -> list[ServedRecord]: ...

    def close(self) -> None: ...


def placeable(capsule: Capsule, environments: list[Environment]) -> list[Environment]:
    """The environments of `environments` that may serve `capsule` (the one rule)."""
    return [env for env in environments if env.admits(capsule)]


class InProcessBridge:
    """Every environment's host in this process: the embedded default."""

    def __init__(self, topology: Topology, hosts: dict[str, EnvironmentHost]):
        self.topology = topology
        self.hosts = hosts

    def _host(self, capsule: Capsule, environment: str, service: Service) -> EnvironmentHost:
        env = self.topology.environment(environment)  # NotFound names the environments
        refuse_unless_admitted(env, capsule)
        host = self.hosts.get(environment)
        if host is None or service not in host.services.names():
            hosted = host.services.names() if host is not None else []
            raise InvalidInput(
                f"{environment!r} hosts no {service!r}", field="service", allowed=hosted
            )
        return host

    def environments_hosting(self, service: Service) -> list[Environment]:
        return [h.environment for h in self.hosts.values() if service in h.services.names()]

    def is_up(self, environment: str) -> bool:
        return environment in self.hosts

    def cognitive(self, capsule: Capsule, environment: str) -> CognitiveClient:
        return self._host(capsule, environment, "cognitive").cognitive_client()

    def context(self, capsule: Capsule, environment: str) -> ContextClient:
        return self._host(capsule, environment, "context").context_client()

    def edge(self, capsule: Capsule, environment: str) -> EdgeClient:
        return self._host(capsule, environment, "edge").edge_client()

    def generative(self, capsule: Capsule, environment: str) -> GenerativeClient:
        return self._host(capsule, environment, "generative").generative_client()

    def rules(self, capsule: Capsule, environment: str) -> RuleClient:
        return self._host(capsule, environment, "tensorlogic").rules_client()

    def health(self, environment: str) -> EnvironmentHealth:
        return self.hosts[environment].health()

    def served(self, environment: str) -> list[ServedRecord]:
        host = self.hosts.get(environment)
        return host.log.records() if host is not None else []

    def close(self) -> None:
        """Nothing to release: the composition root owns the layer objects it built."""
