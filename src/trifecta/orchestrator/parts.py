"""The few parts the orchestrator receives from a composition root (`Stack`, `trifecta serve`,
a federated front door): who the capsules are, where their context lives, how to reach the
environments, and how to charge and limit them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy import Text, bindparam, cast, select
from sqlalchemy.engine import Engine

from trifecta.cognitive.serving.quota import QuotaGate
from trifecta.context.shards import ShardMap, ShardPlace
from trifecta.core.db import RowRead
from trifecta.core.errors import Infeasible
from trifecta.core.ttl_cache import RENEW_AT, TtlCache
from trifecta.federation.bridge import Bridge
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import VERIFY_TTL_S
from trifecta.fleet.plan_model import CapsuleAssignment, Plan
from trifecta.fleet.registry import CapsuleRegistry, capsules_table, pinned_capsule
from trifecta.fleet.registry import request_capsule as _pinned
from trifecta.orchestrator.ledger import CostLedger, Pricer

PLACEMENT_TTL_S = 5.0
# A capsule's row read within this long serves the next request without a read: the auth
# layer's bound for a key's row (`fleet.keys`), so a capsule changed or removed by another
# process stops being served as it was within the same half second its keys do.
CAPSULE_TTL_S = VERIFY_TTL_S
# From this share of the ttl on, the rows of the capsules in use are re-read together in the
# background (one statement), so a capsule in steady use is never read on a request's thread.
CAPSULE_RENEW_AT = RENEW_AT
# Capsules served within this long count as in use (renewed); others expire and are read on
# their next request.
CAPSULE_IN_USE_S = 10.0


@dataclass(frozen=True, slots=True)
class _Row:
    """A capsule and the row text it was parsed from (parsed again only when that changes)."""

    stored: str
    capsule: Capsule


def _parsed(stored: str, old: _Row | None) -> _Row:
    if old is not None and old.stored == stored:
        return old
    return _Row(stored, Capsule.model_validate_json(stored))


class CapsuleDirectory:
    """The capsules being served, by id and by domain.

    `get` answers from memory while the capsule's row was read within `ttl_s` (the auth
    layer's half second), and reads the row otherwise (one primary-key look-up). A thread
    re-reads the rows of the capsules in use in one statement from `CAPSULE_RENEW_AT` of the
    ttl, so a capsule in steady use is not read on a request's thread; an entry's age counts
    from before the read that filled it, so a change made by another process (`trifecta
    capsule` against a running server: policy, quota, share, removal) applies within `ttl_s`
    of its commit, as a revoked key stops working within the same bound. A change made
    through this directory (`add`, `remove`) applies to the very next request. The per-request
    read cost several times its 20 us alone under load (GIL and core waits after each SQLite
    call: 3% of the loop's samples, py-spy). Within a request (`pinned`), every hop's check
    reads the capsule as the request began: one policy per request."""

    def __init__(self, registry: CapsuleRegistry, *, ttl_s: float = CAPSULE_TTL_S):
        self.registry = registry
        self.ttl_s = ttl_s
        self._spec_of = RowRead(
            registry.engine,
            select(cast(capsules_table.c.spec, Text)).where(
                capsules_table.c.id == bindparam("capsule_id")
            ),
        )
        self._fresh: TtlCache[str, _Row] = TtlCache(
            ttl_s,
            self._renew_rows,
            renew_at=CAPSULE_RENEW_AT,
            in_use_s=CAPSULE_IN_USE_S,
            together=True,  # one statement renews them all
            on_stored=self._stored,
            name="capsule-renewal",
        )
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
        found = pinned_capsule(capsule_id)
        if found is not None:
            return found
        row = self._fresh.get(capsule_id)
        if row is None:
            row = self._fresh.read(capsule_id, partial(self._read_row, capsule_id))
        if row is None:
            self._forget(capsule_id, changed=False)
            return self.registry.get(capsule_id)  # raises NotFound naming the field
        return row.capsule

    def _read_row(self, capsule_id: str, old: _Row | None) -> _Row | None:
        row = self._spec_of.read(capsule_id=capsule_id)
        return None if row is None else _parsed(str(row[0]), old)

    def _renew_rows(self, rows: Sequence[tuple[str, _Row]]) -> dict[str, _Row]:
        """The renewal: the rows of the capsules in use in one statement (the rows gone are
        left out, so forgotten)."""
        old = dict(rows)
        ids = sorted(old)
        renewed: dict[str, _Row] = {}
        spec = cast(capsules_table.c.spec, Text)
        with self.registry.engine.connect() as connection:
            for at in range(0, len(ids), 500):  # well under any driver's parameter limit
                chunk = ids[at : at + 500]
                query = select(capsules_table.c.id, spec).where(capsules_table.c.id.in_(chunk))
                for capsule_id, stored in connection.execute(query):
                    renewed[str(capsule_id)] = _parsed(str(stored), old.get(str(capsule_id)))
        return renewed

    def _stored(self, capsule_id: str, row: _Row) -> None:
        # Under the directory's lock, so a removal through it (which forgets the entry under
        # the same lock) is not undone by a read that began before it.
        with self._lock:
            if self._fresh.holds(capsule_id, row) and self._by_id.get(capsule_id) != row.capsule:
                self._remember(row.capsule)

    def renew(self, *, due_only: bool = False) -> int:
        """Re-read the rows of the capsules in use in one statement (the renewal thread's
        work, once the oldest is `CAPSULE_RENEW_AT` of the ttl old: all renewed together stay
        due together); the rows that are gone are forgotten. Returns how many were renewed."""
        return self._fresh.renew(due_only=due_only)

    def close(self) -> None:
        """Stop the renewal thread (entries then expire; requests read the rows)."""
        self._fresh.close()

    def all(self) -> list[Capsule]:
        with self._lock:
            return list(self._by_id.values())

    def members(self, domain: str) -> list[Capsule]:
        with self._lock:
            return [self._by_id[i] for i in sorted(self._by_domain.get(domain, ()))]

    def add(self, capsule: Capsule) -> Capsule:
        """Register a capsule (refused if its domain mixes tenancies) and serve it at once."""
        self.registry.add(capsule)
        with self._lock:
            self._fresh.invalidate(capsule.id)
            self._remember(capsule)
        return capsule

    def remove(self, capsule_id: str) -> None:
        self.registry.remove(capsule_id)
        self._forget(capsule_id)

    def _forget(self, capsule_id: str, *, changed: bool = True) -> None:
        """`changed`: by this directory (reads begun before are dropped); else found gone."""
        with self._lock:
            if changed:
                self._fresh.invalidate(capsule_id)
            else:
                self._fresh.discard(capsule_id)
            gone = self._by_id.pop(capsule_id, None)
            if gone is not None:
                self._by_domain[gone.domain].discard(gone.id)

    def _remember(self, capsule: Capsule) -> None:
        """Index `capsule` by id and domain (the caller holds the lock)."""
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
