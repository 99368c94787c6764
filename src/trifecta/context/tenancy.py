"""Which domain a capsule may read or write.

A capsule writes only its own domain, and reads its own domain plus those explicitly shared
with its domain (or with everyone). The Python API and the HTTP service both ask here, so
the orchestrator's calls and clients' calls are held to the same rule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from trifecta.context.shards import ShardMap
from trifecta.core.errors import Forbidden, NotFound, SovereigntyViolation
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.registry import CapsuleRegistry, pinned_capsule

T = TypeVar("T")


class Tenancy:
    def __init__(self, registry: CapsuleRegistry, shard_map: ShardMap, *, ttl_s: float = 2.0):
        self.registry = registry
        self.shard_map = shard_map
        self.ttl_s = ttl_s
        self._memo: dict[tuple[str, str], tuple[float, object]] = {}
        self._lock = threading.Lock()

    def _remember(self, kind: str, key: str, load: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._memo.get((kind, key))
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]  # type: ignore[return-value]
        value = load()
        if self.ttl_s > 0:
            with self._lock:
                self._memo[(kind, key)] = (now, value)
        return value

    def capsule(self, capsule_id: str) -> Capsule:
        # Inside a request of the loop: the capsule as the request read it (no registry read).
        pinned = pinned_capsule(capsule_id)
        if pinned is not None:
            return pinned
        return self._remember("capsule", capsule_id, lambda: self.registry.get(capsule_id))

    def domain_tenancy(self, domain: str) -> tuple[bool, str | None] | None:
        """(sovereign, jurisdiction) of a domain as the registry recorded it when its first
        capsule joined; it outlives the domain's capsules, so a sovereign domain emptied of
        capsules is still sovereign. None for a domain no capsule ever joined."""
        return self._remember("tenancy", domain, lambda: self.registry.domain_tenancy(domain))

    def known_domain(self, domain: str) -> bool:
        return self._remember(
            "domain",
            domain,
            lambda: self.registry.domain_tenancy(domain) is not None or self.shard_map.has(domain),
        )

    def write_domain(self, capsule_id: str, domain: str | None = None) -> str:
        """The capsule's own domain; naming any other domain is refused."""
        own = self.capsule(capsule_id).domain
        if domain is not None and domain != own:
            raise Forbidden(
                f"capsule {capsule_id!r} may write only its own domain {own!r}", field="domain"
            )
        return own

    def read_domain(self, capsule_id: str, domain: str | None = None) -> str:
        """The domain to read: the capsule's own unless another, shared one is named."""
        own = self.capsule(capsule_id).domain
        if domain is None or domain == own:
            return own
        if not self.known_domain(domain):
            raise NotFound(f"no domain {domain!r}", field="domain")
        shared = self._remember("shared", own, lambda: self.shard_map.readable_by(own))
        if domain not in shared:
            raise Forbidden(
                f"domain {domain!r} is not shared with capsule {capsule_id!r} (domain {own!r})",
                field="domain",
            )
        theirs = self.domain_tenancy(domain)
        if theirs is not None and theirs != self.capsule(capsule_id).tenancy:
            # A share never carries sovereign context across a jurisdiction (or out of it).
            raise SovereigntyViolation(
                f"domain {domain!r} belongs to another tenancy than capsule {capsule_id!r}",
                field="domain",
            )
        return domain

    def forget(self) -> None:
        with self._lock:
            self._memo.clear()
