"""One shard database: playbook bullets and memories of the domains it holds.

Every write runs in one transaction that first takes the domain's lock (`sql.lock_domain`),
so concurrent writers never lose an update on either back end (Postgres: `SELECT ... FOR
UPDATE` on the domain row; SQLite: `BEGIN IMMEDIATE`). Reads check the domain's fence so a
reader that still routes to a shard the domain has left is told to re-route.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import make_url

from trifecta.context import tables
from trifecta.context.deltas import AddOp, Delta, DeltaResult, UpdateOp
from trifecta.context.merge import (
    LIVE,
    BulletState,
    apply_ops,
    evict_over_budget,
    merge_duplicates,
    referenced_ids,
)
from trifecta.context.models import (
    AddedMemory,
    Bullet,
    BulletStatus,
    DomainStats,
    MemoryDraft,
    MemoryHit,
    MemoryItem,
)
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import (
    Vector,
    bullet_of,
    bump_version,
    check_readable,
    lock_domain,
    memory_of,
    to_bytes,
    to_vector,
    vector_or_none,
)
from trifecta.context.tokens import count_tokens
from trifecta.core.db import ensure_schema, get_engine, transaction

B, M = tables.bullets.c, tables.memories.c


@dataclass(frozen=True)
class PendingMemory:
    """A memory ready to store: its id, text, embedding, and the item it folds into if any."""

    id: str
    draft: MemoryDraft
    vector: Vector
    reinforce: str | None = None


@dataclass(frozen=True)
class Changes:
    """Rows of a domain written after some version, as the in-process views consume them."""

    version: int
    bullets: list[tuple[Bullet, Vector | None]]
    memories: list[tuple[MemoryItem, str, Vector]]  # (item, status, embedding)


class ShardStore:
    def __init__(self, url: str):
        self.engine = get_engine(url)
        ensure_schema(self.engine, "trifecta.context")
        self.url = self.engine.url.render_as_string(hide_password=False)

    @property
    def label(self) -> str:
        """The URL with any password hidden (for logs, errors and listings)."""
        return make_url(self.url).render_as_string(hide_password=True)

    # -- reads -------------------------------------------------------------------------
    def version(self, domain: str) -> int:
        with transaction(self.engine) as session:
            return check_readable(session, domain)

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
            if version <= since:
                return Changes(version, [], [])
            brows = session.execute(
                select(tables.bullets).where(B.domain == domain, B.seq > since)
            ).all()
            mrows = session.execute(
                select(tables.memories).where(M.domain == domain, M.seq > since)
            ).all()
        return Changes(
            version,
            [(bullet_of(r), vector_or_none(r.embedding)) for r in brows],
            [(memory_of(r), str(r.status), to_vector(r.embedding)) for r in mrows],
        )

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
    def apply_delta(
        self,
        domain: str,
        delta: Delta,
        vectors: Mapping[str, Vector],
        settings: ContextSettings,
    ) -> DeltaResult:
        """Merge a delta and grow-and-refine in one transaction. `vectors` maps each ADD or
        UPDATE content to its embedding (computed before the lock is taken)."""
        now = time.time()
        refs = referenced_ids(delta.ops)
        op_ids = [op.op_id for op in delta.ops]
        with transaction(self.engine, write=True) as session:
            version = lock_domain(session, domain)
            applied = {
                str(r[0])
                for r in session.execute(
                    select(tables.applied_ops.c.op_id).where(
                        tables.applied_ops.c.domain == domain,
                        tables.applied_ops.c.op_id.in_(op_ids),
                    )
                )
            }
            if applied.issuperset(op_ids):
                return DeltaResult(
                    domain=domain,
                    version=version,
                    applied=[],
                    skipped=op_ids,
                    ignored=[],
                    added=[],
                    merged={},
                    evicted=[],
                    bullets=[],
                )
            # Only new or edited text can duplicate a bullet or outgrow the budget, so a delta
            # of TAGs and REMOVEs loads just the bullets it names.
            grows = any(isinstance(op, AddOp | UpdateOp) for op in delta.ops)
            state, stored_vectors = self._load_for_merge(session, domain, refs, whole=grows)
            existed = set(state)
            before = {bid: b.key() for bid, b in state.items()}
            report = apply_ops(
                state,
                applied,
                delta.ops,
                now=now,
                prune_margin=settings.prune_margin,
                count_tokens=count_tokens,
            )
            for bid in report.content_changed:
                stored_vectors[bid] = vectors[state[bid].content]
            report.merged = merge_duplicates(
                state,
                report.content_changed,
                stored_vectors,
                threshold=settings.dedup_threshold,
                now=now,
                prune_margin=settings.prune_margin,
            )
            if grows:
                report.evicted = evict_over_budget(state, settings.playbook_token_budget, now=now)
            version = bump_version(session, domain, version)
            changed = [bid for bid, b in state.items() if before.get(bid) != b.key()]
            for bid in changed:
                row = {**state[bid].__dict__, "status": state[bid].status.value, "seq": version}
                if bid in report.content_changed:
                    row["embedding"] = to_bytes(stored_vectors[bid])
                if bid in existed:
                    session.execute(
                        update(tables.bullets).where(B.domain == domain, B.id == bid).values(**row)
                    )
                else:
                    session.execute(tables.bullets.insert().values(domain=domain, **row))
            recorded = report.applied + report.ignored
            session.execute(
                tables.applied_ops.insert(),
                [
                    {"domain": domain, "op_id": op_id, "applied_at": now, "seq": version}
                    for op_id in op_ids
                    if op_id in recorded
                ],
            )
        touched = sorted(set(changed) | report.touched)
        return DeltaResult(
            domain=domain,
            version=version,
            applied=report.applied,
            skipped=report.skipped,
            ignored=report.ignored,
            added=report.added,
            merged=report.merged,
            evicted=report.evicted,
            bullets=[state[b].to_model() for b in touched],
        )

    def _load_for_merge(
        self, session: Any, domain: str, refs: set[str], *, whole: bool
    ) -> tuple[dict[str, BulletState], dict[str, Vector]]:
        """Every referenced bullet and the chain of survivors it was merged into, plus, when
        `whole`, the live bullets (for de-duplication and the budget)."""
        named = B.id.in_(sorted(refs))
        wanted = or_(B.status.in_([s.value for s in LIVE]), named) if whole else named
        rows = session.execute(select(tables.bullets).where(B.domain == domain, wanted)).all()
        state = {r.id: BulletState.of(bullet_of(r)) for r in rows}
        vectors = {r.id: v for r in rows if (v := vector_or_none(r.embedding)) is not None}
        asked: set[str] = set()
        while True:
            missing = {b.merged_into for b in state.values() if b.merged_into} - set(state) - asked
            if not missing:
                return state, vectors
            asked |= missing
            for r in session.execute(
                select(tables.bullets).where(B.domain == domain, B.id.in_(sorted(missing)))
            ):
                state[r.id] = BulletState.of(bullet_of(r))

    def add_memories(
        self, domain: str, pending: Sequence[PendingMemory]
    ) -> tuple[int, list[AddedMemory]]:
        """Append memories; an item whose id exists is left as it is, and an item with a
        `reinforce` target bumps that item's count instead of adding a near-duplicate."""
        now = time.time()
        ids = [p.id for p in pending]
        with transaction(self.engine, write=True) as session:
            version = lock_domain(session, domain)
            existing = {
                str(r[0])
                for r in session.execute(select(M.id).where(M.domain == domain, M.id.in_(ids)))
            }
            results: list[AddedMemory] = []
            inserts: list[dict[str, Any]] = []
            reinforce: dict[str, int] = {}
            for p in pending:
                if p.id in existing:
                    results.append(AddedMemory(id=p.id, status="exists"))
                    continue
                existing.add(p.id)
                if p.reinforce:
                    reinforce[p.reinforce] = reinforce.get(p.reinforce, 0) + 1
                    results.append(
                        AddedMemory(id=p.id, status="reinforced", reinforced_id=p.reinforce)
                    )
                    continue
                d = p.draft
                inserts.append(
                    {
                        "domain": domain,
                        "id": p.id,
                        "title": d.title,
                        "description": d.description,
                        "content": d.content,
                        "outcome": d.outcome,
                        "source_capsule": d.source.capsule_id,
                        "source_task": d.source.task_id,
                        "source_trajectory": d.source.trajectory_id,
                        "reinforced": 0,
                        "status": "active",
                        "embedding": to_bytes(p.vector),
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                results.append(AddedMemory(id=p.id, status="added"))
            if not inserts and not reinforce:
                return version, results
            version = bump_version(session, domain, version)
            for row in inserts:
                row["seq"] = version
            if inserts:
                session.execute(tables.memories.insert(), inserts)
            for target, count in sorted(reinforce.items()):
                session.execute(
                    update(tables.memories)
                    .where(M.domain == domain, M.id == target)
                    .values(reinforced=M.reinforced + count, updated_at=now, seq=version)
                )
        return version, results
