"""Capsule id (from the request's API key) -> the share and quota its requests are served with.

Capsules come from the capsule registry (`fleet/registry.py`); lookups are cached for a few
seconds so that a busy tier does not read the control database on every request, while a
change of share or quota still takes effect promptly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from trifecta.core.errors import InvalidInput, NotFound
from trifecta.fleet.capsules import Capsule

KEY_FIELD = "authorization"  # the capsule is the API key's: errors name the key


@dataclass(frozen=True)
class Tenant:
    id: str
    share: float = 1.0
    quota_rps: float | None = None

    @staticmethod
    def of(capsule: Capsule) -> Tenant:
        return Tenant(capsule.id, capsule.share, capsule.quota_rps)


# Requests of a key without a capsule (the admin key) share this tenant (unless the server
# requires a capsule key).
ANONYMOUS = Tenant("anonymous")


class TenantDirectory:
    """Resolves capsule ids through `lookup` (default: the capsule registry), with a TTL cache."""

    def __init__(
        self,
        lookup: Callable[[str], Capsule] | None = None,
        *,
        ttl_s: float = 5.0,
        require_capsule: bool = False,
    ):
        self._lookup = lookup
        self.ttl_s = ttl_s
        self.require_capsule = require_capsule
        self._cache: dict[str, tuple[float, Tenant]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def of(capsules: list[Capsule], *, require_capsule: bool = False) -> TenantDirectory:
        """A directory over a fixed list of capsules (benchmarks, embedded use)."""
        by_id = {capsule.id: capsule for capsule in capsules}

        def lookup(capsule_id: str) -> Capsule:
            if capsule_id not in by_id:
                raise NotFound(f"no capsule {capsule_id!r}", field="capsule_id")
            return by_id[capsule_id]

        return TenantDirectory(lookup, require_capsule=require_capsule)

    def _registry_lookup(self) -> Callable[[str], Capsule]:
        if self._lookup is None:
            from trifecta.fleet.registry import CapsuleRegistry

            self._lookup = CapsuleRegistry().get
        return self._lookup

    def resolve(self, capsule_id: str | None) -> Tenant:
        """The tenant of a request's capsule (NotFound for an unknown capsule)."""
        if not capsule_id:
            if self.require_capsule:
                raise InvalidInput("this server serves capsule keys only", field=KEY_FIELD)
            return ANONYMOUS
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(capsule_id)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            tenant = Tenant.of(self._registry_lookup()(capsule_id))
        except NotFound:
            raise NotFound(f"no capsule {capsule_id!r}", field=KEY_FIELD) from None
        with self._lock:
            self._cache[capsule_id] = (now, tenant)
        return tenant
