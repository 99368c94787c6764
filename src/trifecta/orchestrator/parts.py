"""The few parts the orchestrator receives from a composition root (`Stack`, `trifecta serve`,
a federated front door): who the capsules are, where their context lives, how to reach the
environments, and how to charge and limit them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from sqlalchemy import Text, bindparam, cast, select
from sqlalchemy.engine import Engine

from trifecta.cognitive.serving.quota import QuotaGate
from trifecta.context.shards import ShardMap, ShardPlace
from trifecta.core.db import RowRead
from trifecta.core.errors import Infeasible
from trifecta.federation.bridge import Bridge
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.plan_model import CapsuleAssignment, Plan
from trifecta.fleet.registry import CapsuleRegistry, capsules_table
from trifecta.orchestrator.ledger import CostLedger, Pricer

PLACEMENT_TTL_S = 5.0
# The capsule of the request this thread (or task) is serving, as read at its start.
_pinned: ContextVar[Capsule | None] = ContextVar("trifecta_request_capsule", default=None)


class CapsuleDirectory:
    """The capsules being served, by id and by domain. `get` reads the capsule's row on every
    request (one primary-key look-up), so a change made by another process (`trifecta capsule`
    against a running server: policy, quota, share, removal) applies to the next request.
    Within a request (`pinned`), every hop's check reads the capsule as the request began
    instead of the row again: one policy per request, and one look-up instead of one a hop
    (those look-ups were 7% of the loop's CPU, py-spy). The look-up reads the row's stored
    JSON on a plain connection and parses it only when it differs from the text last parsed:
    an ORM session and a pydantic validation a request cost more than the read itself."""

    def __init__(self, registry: CapsuleRegistry):
        self.registry = registry
        self._spec_of = RowRead(
            registry.engine,
            select(cast(capsules_table.c.spec, Text)).where(
                capsules_table.c.id == bindparam("capsule_id")
            ),
        )
        self._parsed: dict[str, tuple[str, Capsule]] = {}  # id -> (stored JSON, capsule)
        self._by_id: dict[str, Capsule] = {}
        self._by_domain: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        capsules = self.registry.list()
        with self._lock:
            self._by_id = {c.id: c for c in capsules}
            self._by_domain = {}
            for capsule in capsules:
                self._by_domain.setdefault(capsule.domain, set()).add(capsule.id)

    @contextmanager
    def pinned(self, capsule: Capsule) -> Iterator[Capsule]:
        """Serve `capsule` as read now for the duration of the block (in this context)."""
        token = _pinned.set(capsule)
        try:
            yield capsule
        finally:
            _pinned.reset(token)

    def get(self, capsule_id: str) -> Capsule:
        pinned = _pinned.get()
        if pinned is not None and pinned.id == capsule_id:
            return pinned
        row = self._spec_of.read(capsule_id=capsule_id)
        if row is None:
            self._forget(capsule_id)
            return self.registry.get(capsule_id)  # raises NotFound naming the field
        stored = str(row[0])
        parsed = self._parsed.get(capsule_id)
        if parsed is not None and parsed[0] == stored:
            return parsed[1]
        found = Capsule.model_validate_json(stored)
        self._parsed[capsule_id] = (stored, found)
        if self._by_id.get(capsule_id) != found:
            self._remember(found)
        return found

    def all(self) -> list[Capsule]:
        with self._lock:
            return list(self._by_id.values())

    def members(self, domain: str) -> list[Capsule]:
        with self._lock:
            return [self._by_id[i] for i in sorted(self._by_domain.get(domain, ()))]

    def add(self, capsule: Capsule) -> Capsule:
        """Register a capsule (refused if its domain mixes tenancies) and serve it at once."""
        self.registry.add(capsule)
        self._remember(capsule)
        return capsule

    def remove(self, capsule_id: str) -> None:
        self.registry.remove(capsule_id)
        self._forget(capsule_id)

    def _forget(self, capsule_id: str) -> None:
        self._parsed.pop(capsule_id, None)
        with self._lock:
            gone = self._by_id.pop(capsule_id, None)
            if gone is not None:
                self._by_domain[gone.domain].discard(gone.id)

    def _remember(self, capsule: Capsule) -> None:
        with self._lock:
            old = self._by_id.get(capsule.id)
            if old is not None:
                self._by_domain.get(old.domain, set()).discard(old.id)
            self._by_id[capsule.id] = capsule
            self._by_domain.setdefault(capsule.domain, set()).add(capsule.id)

    def __len__(self) -> int:
        return len(self._by_id)


class ShardPlacement:
    """Which environment homes each domain's context shard: placed on first use in the first
    environment that hosts context and admits every capsule of the domain (the one rule), and
    refused when a shard already sits where one of its capsules may not go."""

    def __init__(
        self,
        shard_map: ShardMap,
        capsules: CapsuleDirectory,
        bridge: Bridge,
        shard_url: dict[str, str],
    ):
        self.shard_map = shard_map
        self.capsules = capsules
        self.bridge = bridge
        self.shard_url = shard_url  # environment -> database URL of its context shards
        self._placed: dict[str, tuple[str, float]] = {}

    def place_all(self, plan: Plan) -> None:
        """Give each domain a shard in the environment that homes most of its capsules."""
        homes: dict[str, Counter[str]] = {}
        for item in plan.assignments:
            homes.setdefault(item.domain, Counter())[item.environment] += 1
        for domain, counts in sorted(homes.items()):
            self.place(domain, [env for env, _ in counts.most_common()])

    def place(self, domain: str, preferred: Sequence[str] = ()) -> str:
        """The environment of `domain`'s context shard. Answers are remembered for a few
        seconds (a shard move elsewhere shows up after that)."""
        known = self._placed.get(domain)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        env = self._place(domain, preferred)
        self._placed[domain] = (env, time.monotonic() + PLACEMENT_TTL_S)
        return env

    def _derive_place(self, domain: str, url: str) -> tuple[str, ShardPlace]:
        """A shard entry without a place is never re-homed: its place is the environment whose
        shard database it is, or the domain is refused until an operator names one."""
        owner = next((name for name, known in self.shard_url.items() if known == url), None)
        if owner is None:
            raise Infeasible(
                f"domain {domain!r} has its context shard at a database of no known environment; "
                "name its place with `trifecta context shard move --place`",
                field="domain",
            )
        env = self.bridge.topology.environment(owner)
        place = ShardPlace(name=env.name, kind=env.kind, jurisdiction=env.jurisdiction)
        self.shard_map.assign(domain, url, place)
        return url, place

    def forget(self, domain: str) -> None:
        self._placed.pop(domain, None)

    def _place(self, domain: str, preferred: Sequence[str]) -> str:
        members = self.capsules.members(domain)
        placed = self.shard_map.get(domain)
        topology = self.bridge.topology
        if placed is not None and placed[1] is None:
            placed = self._derive_place(domain, placed[0])
        if placed is None:
            hosts = [e.name for e in self.bridge.environments_hosting("context")]
            for name in [*preferred, *hosts]:
                env = topology.environment(name)
                if name in hosts and name in self.shard_url and all(env.admits(c) for c in members):
                    place = ShardPlace(name=env.name, kind=env.kind, jurisdiction=env.jurisdiction)
                    self.shard_map.assign(domain, self.shard_url[name], place)
                    return env.name
            raise Infeasible(
                f"no environment hosting context admits every capsule of domain {domain!r}",
                field="domain",
            )
        shard_place = placed[1]
        assert shard_place is not None
        home = next((e for e in topology.environments if e.name == shard_place.name), None)
        for capsule in members:
            if home is None or not home.admits(capsule):
                raise Infeasible(
                    f"domain {domain!r} has its context shard in {shard_place.name!r}, which "
                    f"does not admit capsule {capsule.id!r}; move it with "
                    "`trifecta context shard move`",
                    field="domain",
                )
        return shard_place.name


@dataclass
class LoopParts:
    """What the orchestrator needs, and nothing more."""

    capsules: CapsuleDirectory
    bridge: Bridge
    shards: ShardPlacement
    plan: Plan
    pricer: Pricer
    ledger: CostLedger
    engine: Engine
    quota: QuotaGate
    tiers: tuple[str, ...]
    assignments: dict[str, CapsuleAssignment] = field(init=False)

    def __post_init__(self) -> None:
        self.assignments = {a.capsule_id: a for a in self.plan.assignments}
