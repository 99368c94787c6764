"""How the orchestrator reaches a service (a cognitive tier, a context shard, the edge mesh)
in an environment of the topology.

`Bridge.client(capsule, environment, service)` returns an object with the service's own
interface (a `LanguageModel`, the context facade, the edge mesh). The mock bridge
(`federation.mock`) answers with in-process objects behind fault injection; a networked bridge
answers with HTTP / MCP clients of the same interfaces. Either way the bridge is where a
capsule's sovereignty is enforced one last time: a client for an environment the capsule may
not reach is never handed out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import Environment

# The services an environment can host.
COGNITIVE, CONTEXT, EDGE = "cognitive", "context", "edge"


@dataclass(frozen=True)
class Hop:
    """One call a capsule's request made into an environment (the bridge's trace)."""

    capsule_id: str
    environment: str
    service: str
    method: str
    ok: bool


class Bridge(Protocol):
    def environments_hosting(self, service: str) -> list[Environment]: ...

    def is_up(self, environment: str) -> bool: ...

    def client(self, capsule: Capsule, environment: str, service: str) -> Any: ...
