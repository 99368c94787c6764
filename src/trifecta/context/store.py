"""One shard database: playbook bullets and memories of the domains it holds.

Every write runs in one transaction that first takes the domain's lock (`sql.lock_domain`),
so concurrent writers never lose an update on either back end (Postgres: `SELECT ... FOR
UPDATE` on the domain row; SQLite: `BEGIN IMMEDIATE`). Reads check the domain's fence so a
reader that still routes to a shard the domain has left is told to re-route.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.engine import make_url

from trifecta.context import tables
from trifecta.context.deltas import Delta, DeltaResult
from trifecta.context.learn_queue import LearnQueue
from trifecta.context.models import (
    AddedMemory,
    Bullet,
    BulletStatus,
    DomainStats,
    MemoryHit,
    MemoryItem,
)
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import (
    DomainMoved,
    Vector,
    bullet_of,
    check_readable,
    lock_domain,
    memory_of,
    vector_or_none,
)
from trifecta.context.writes import (
    Changes,
    PendingMemory,
    changes_in,
    insert_memories,
    merge_delta,
)
from trifecta.core.db import RowRead, ensure_schema, get_engine, transaction

B, M = tables.bullets.c, tables.memories.c

# The domain versions the request this context serves has read: (shard URL, domain) ->
# version. Shared by reference with the contexts copied from it (the request's retrieval).
_pinned: ContextVar[dict[tuple[str, str], int] | None] = ContextVar(
    "trifecta_request_versions", default=None
)


@contextmanager
def versions_pinned() -> Iterator[None]:
    """Within the block (in this context and the ones copied from it), each shard's version
    of a domain is read once and then served as read: one read a request instead of one a
    hop (2.4 a request in the loop, each costing several times its ~20 us alone under load).
    A move or another process's write is seen by the next block; a write through this store
    inside the block drops the domain's pinned version."""
    token = _pinned.set({})
    try:
        yield
    finally:
        _pinned.reset(token)


class ShardStore:
    def __init__(self, url: str):
        self.engine = get_engine(url)
        ensure_schema(self.engine, "trifecta.context")
        self.url = self.engine.url.render_as_string(hide_password=False)
        self.queue = LearnQueue(self.engine)
        d = tables.domains.c
        self._domain_row = RowRead(
            self.engine,
            select(d.version, d.state, d.moved_to).where(d.domain == bindparam("domain")),
        )

    @property
    def label(self) -> str:
        """The URL with any password hidden (for logs, errors and listings)."""
        return make_url(self.url).render_as_string(hide_password=True)

    # -- reads -------------------------------------------------------------------------
    def version(self, domain: str) -> int:
        """The domain's version (0 before its first write); raises DomainMoved when a move
        fenced it off this shard. Read every request without Redis, hence one plain statement
        rather than a session (`RowRead`: 290 -> ~20 us on SQLite); once a request inside
        `versions_pinned`."""
        pinned = _pinned.get()
        if pinned is None:
            return self._read_version(domain)
        key = (self.url, domain)
        version = pinned.get(key)
        if version is None:
            version = pinned[key] = self._read_version(domain)
        return version

    def _read_version(self, domain: str) -> int:
        row = self._domain_row.read(domain=domain)
        if row is None:
            return 0
        version, state, moved_to = row
        if state == "moved":
            raise DomainMoved(domain, None if moved_to is None else str(moved_to))
        assert isinstance(version, int)  # an INTEGER column on both back ends
        return version

    def domains(self) -> list[str]:
        with transaction(self.engine) as session:
            rows = session.execute(
                select(tables.domains.c.domain)
                .where(tables.domains.c.state == "active")
                .order_by(tables.domains.c.domain)
            )
            return [str(r[0]) for r in rows]

    def stats(self, domain: str) -> DomainStats:
        """How big the domain's context is: bullets by status, and memory items."""
        with transaction(self.engine) as session:
            version = check_readable(session, domain)
            by_status: dict[str, int] = dict(
                session.execute(
                    select(B.status, func.count()).where(B.domain == domain).group_by(B.status)
                ).all()
            )
            memories = session.execute(
                select(func.count())
                .select_from(tables.memories)
                .where(tables.memories.c.domain == domain)
            ).scalar_one()
        return DomainStats(
            domain=domain,
            version=version,
            bullets={str(k): int(v) for k, v in by_status.items()},
            memories=int(memories),
        )

    def bullets(self, domain: str, *, live_only: bool = True) -> tuple[int, list[Bullet]]:
        query = select(tables.bullets).where(B.domain == domain).order_by(B.id)
        if live_only:
            query = query.where(B.status == BulletStatus.ACTIVE.value)
        with transaction(self.engine) as session:
            version = check_readable(session, domain)
            return version, [bullet_of(r) for r in session.execute(query)]

    def bullets_by_id(self, domain: str, ids: Sequence[str]) -> list[Bullet]:
        """Bullets by id whatever their status (the ones that exist)."""
        if not ids:
            return []
        with transaction(self.engine) as session:
            check_readable(session, domain)
            rows = session.execute(
                select(tables.bullets).where(B.domain == domain, B.id.in_(sorted(set(ids))))
            )
            return [bullet_of(r) for r in rows]

    def bullets_with_vectors(self, domain: str) -> tuple[int, list[tuple[Bullet, Vector | None]]]:
        query = (
            select(tables.bullets)
            .where(B.domain == domain, B.status == BulletStatus.ACTIVE.value)
            .order_by(B.id)
        )
        with transaction(self.engine) as session:
            version = check_readable(session, domain)
            rows = session.execute(query).all()
        return version, [(bullet_of(r), vector_or_none(r.embedding)) for r in rows]

    def changes_since(self, domain: str, since: int) -> Changes:
        """Rows written after version `since`. The version is read first, so rows at least
        that new are included (a later write seen here is simply re-read next time)."""
        with transaction(self.engine) as session:
            version = check_readable(session, domain)
            return changes_in(session, domain, since, version)

    def memories(self, domain: str, ids: Sequence[str]) -> dict[str, MemoryItem]:
        if not ids:
            return {}
        with transaction(self.engine) as session:
            rows = session.execute(
                select(tables.memories).where(M.domain == domain, M.id.in_(list(ids)))
            )
            return {r.id: memory_of(r) for r in rows}

    def scan_memories(
        self,
        domain: str,
        query: Vector,
        *,
        k: int,
        outcome: str | None = None,
        since: float | None = None,
        min_similarity: float = -1.0,
    ) -> tuple[int, list[MemoryHit]]:
        """Exact top-k by cosine over the domain's stored embeddings: the uncached path,
        reading every candidate row's embedding from the shard."""
        conditions = [M.domain == domain, M.status == "active"]
        if outcome:
            conditions.append(M.outcome == outcome)
        if since is not None:
            conditions.append(M.created_at >= since)
        with transaction(self.engine) as session:
            version = check_readable(session, domain)
            rows = session.execute(select(M.id, M.embedding).where(and_(*conditions))).all()
            if not rows:
                return version, []
            matrix = np.frombuffer(b"".join(r.embedding for r in rows), dtype=np.float32)
            sims = matrix.reshape(len(rows), -1) @ query
            top = np.argsort(-sims, kind="stable")[:k]
            chosen = {rows[i].id: float(sims[i]) for i in top if sims[i] >= min_similarity}
            items = session.execute(
                select(tables.memories).where(M.domain == domain, M.id.in_(list(chosen)))
            )
            by_id = {r.id: memory_of(r) for r in items}
        return version, [MemoryHit(memory=by_id[i], similarity=s) for i, s in chosen.items()]

    # -- writes ------------------------------------------------------------------------
    def _unpin(self, domain: str) -> None:
        """After a write in a pinned block: its later reads see the version it wrote."""
        pinned = _pinned.get()
        if pinned is not None:
            pinned.pop((self.url, domain), None)

    def apply_delta(
        self,
        domain: str,
        delta: Delta,
        vectors: Mapping[str, Vector],
        settings: ContextSettings,
    ) -> DeltaResult:
        """Merge a delta and grow-and-refine in one transaction. `vectors` maps each ADD or
        UPDATE content to its embedding (computed before the lock is taken)."""
        try:
            with transaction(self.engine, write=True) as session:
                version = lock_domain(session, domain)
                return merge_delta(session, domain, version, delta, vectors, settings)
        finally:
            self._unpin(domain)

    def add_memories(
        self, domain: str, pending: Sequence[PendingMemory]
    ) -> tuple[int, list[AddedMemory]]:
        """Append memories; an item whose id exists is left as it is, and an item with a
        `reinforce` target bumps that item's count instead of adding a near-duplicate."""
        try:
            with transaction(self.engine, write=True) as session:
                version = lock_domain(session, domain)
                return insert_memories(session, domain, version, pending)
        finally:
            self._unpin(domain)
