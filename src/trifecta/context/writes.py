"""The context layer's writes as steps inside a caller's transaction.

`ShardStore` runs each alone (one delta, one batch of memories); the learning worker runs
many of them, and the marking of its queue rows, in one transaction under one domain lock.
Every step takes the domain's current version (the caller holds the lock) and returns the
version after it: a step that changes rows bumps it, and its rows carry the new value. The
worker's transaction keeps the version in hand and writes it once at its end
(`write_version=False`, `MemoryBatch`): nobody else reads it before the commit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session

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
from trifecta.context.models import AddedMemory, Bullet, MemoryDraft, MemoryItem
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import (
    Vector,
    bullet_of,
    bump_version,
    memory_of,
    to_bytes,
    to_vector,
    vector_or_none,
)
from trifecta.context.tokens import count_tokens

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
    """Rows of a domain written after version `since`, as the in-process views consume them."""

    version: int
    bullets: list[tuple[Bullet, Vector | None]]
    memories: list[tuple[MemoryItem, str, Vector]]  # (item, status, embedding)
    since: int = 0


# Statements the learner runs every batch, built once: building a SELECT of a whole table's
# columns and keying it cost ~4x running it (116 against 30 us a statement, measured here).
_CHANGED_BULLETS = select(tables.bullets).where(
    B.domain == bindparam("b_domain"), B.seq > bindparam("b_since")
)
_CHANGED_MEMORIES = select(tables.memories).where(
    M.domain == bindparam("b_domain"), M.seq > bindparam("b_since")
)
_STORED_IDS = select(M.id).where(
    M.domain == bindparam("b_domain"), M.id.in_(bindparam("b_ids", expanding=True))
)


def changes_in(session: Session, domain: str, since: int, version: int) -> Changes:
    """The rows with `seq > since`, read in the caller's transaction (at `version`)."""
    if version <= since:
        return Changes(version, [], [], since)
    params = {"b_domain": domain, "b_since": since}
    brows = session.execute(_CHANGED_BULLETS, params).all()
    mrows = session.execute(_CHANGED_MEMORIES, params).all()
    return Changes(
        version,
        [(bullet_of(r), vector_or_none(r.embedding)) for r in brows],
        [(memory_of(r), str(r.status), to_vector(r.embedding)) for r in mrows],
        since,
    )


def merge_delta(
    session: Session,
    domain: str,
    version: int,
    delta: Delta,
    vectors: Mapping[str, Vector],
    settings: ContextSettings,
    *,
    write_version: bool = True,
) -> DeltaResult:
    """Merge a delta and grow-and-refine. `vectors` maps each ADD or UPDATE content to its
    embedding (computed before the lock was taken). The result carries the new version;
    with `write_version=False` the caller writes it to the domain row."""
    now = time.time()
    refs = referenced_ids(delta.ops)
    op_ids = [op.op_id for op in delta.ops]
    applied = {str(r[0]) for r in session.execute(_APPLIED, {"b_domain": domain, "b_ops": op_ids})}
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
    # Only new or edited text can duplicate a bullet or outgrow the budget, so a delta of
    # TAGs and REMOVEs loads just the bullets it names.
    grows = any(isinstance(op, AddOp | UpdateOp) for op in delta.ops)
    state, stored_vectors = _load_for_merge(session, domain, refs, whole=grows)
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
    version = bump_version(session, domain, version) if write_version else version + 1
    changed = [bid for bid, b in state.items() if before.get(bid) != b.key()]
    updates: list[dict[str, Any]] = []
    inserts: list[dict[str, Any]] = []
    for bid in changed:
        row = {**state[bid].__dict__, "status": state[bid].status.value, "seq": version}
        if bid in report.content_changed:
            row["embedding"] = to_bytes(stored_vectors[bid])
        if bid in existed:
            updates.append(row)
        else:
            inserts.append({"domain": domain, **row})
    _update_bullets(session, domain, updates)
    for keys in {tuple(r) for r in inserts}:  # rows with and without an embedding
        session.execute(tables.bullets.insert(), [r for r in inserts if tuple(r) == keys])
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


# The merge's statements, built once (their compiled forms are reused; the lists they
# take are expanding parameters): building and keying a statement per call cost more CPU
# than SQLite's work for it.
_APPLIED = select(tables.applied_ops.c.op_id).where(
    tables.applied_ops.c.domain == bindparam("b_domain"),
    tables.applied_ops.c.op_id.in_(bindparam("b_ops", expanding=True)),
)
_NAMED = B.id.in_(bindparam("b_ids", expanding=True))
_FOR_MERGE = {
    whole: select(tables.bullets).where(
        B.domain == bindparam("b_domain"),
        or_(B.status.in_([s.value for s in LIVE]), _NAMED) if whole else _NAMED,
    )
    for whole in (False, True)
}
_BULLET_UPDATES: dict[tuple[str, ...], Any] = {}  # the columns set -> their UPDATE


def _update_bullets(session: Session, domain: str, rows: Sequence[dict[str, Any]]) -> None:
    """Overwrite stored bullets with `rows` (each a bullet's columns): one executemany per
    set of columns."""
    for keys in sorted({tuple(r) for r in rows}):
        stmt = _BULLET_UPDATES.get(keys)
        if stmt is None:
            stmt = _BULLET_UPDATES[keys] = (
                update(tables.bullets)
                .where(B.domain == bindparam("b_domain"), B.id == bindparam("b_id"))
                .values({k: bindparam("v_" + k) for k in keys})
            )
        session.execute(
            stmt,
            [
                {"b_domain": domain, "b_id": r["id"], **{"v_" + k: r[k] for k in keys}}
                for r in rows
                if tuple(r) == keys
            ],
        )


def _load_for_merge(
    session: Session, domain: str, refs: set[str], *, whole: bool
) -> tuple[dict[str, BulletState], dict[str, Vector]]:
    """Every referenced bullet and the chain of survivors it was merged into, plus, when
    `whole`, the live bullets (for de-duplication and the budget)."""
    rows = session.execute(_FOR_MERGE[whole], {"b_domain": domain, "b_ids": sorted(refs)}).all()
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


# One statement for every reinforced item of a batch (executemany): built once, so its
# compiled form is reused instead of building and compiling an UPDATE per item.
_REINFORCE = (
    update(tables.memories)
    .where(M.domain == bindparam("b_domain"), M.id == bindparam("b_id"))
    .values(
        reinforced=M.reinforced + bindparam("b_count"),
        updated_at=bindparam("b_now"),
        seq=bindparam("b_seq"),
    )
)


class MemoryBatch:
    """The memories of several steps of one transaction under the domain's lock, written at
    `flush`: one SELECT of the ids already stored, one multi-row INSERT and one executemany
    UPDATE of the reinforced stored items, instead of that round of statements per step
    (SQLAlchemy's work per statement was most of the learner's CPU in SQL). The rows end as
    the steps one at a time leave them: an item added and then reinforced in the same batch
    is inserted with its count, its last `updated_at` and its last version."""

    def __init__(self, session: Session, domain: str, ids: Sequence[str]):
        self.domain = domain
        wanted = sorted(set(ids))
        self._existing: set[str] = (
            {str(r[0]) for r in session.execute(_STORED_IDS, {"b_domain": domain, "b_ids": wanted})}
            if wanted
            else set()
        )
        self._inserts: dict[str, dict[str, Any]] = {}  # by id, in the order added
        self._reinforce: dict[str, dict[str, Any]] = {}  # stored items: count, now, seq

    def add(self, version: int, pending: Sequence[PendingMemory]) -> tuple[int, list[AddedMemory]]:
        """One step: append memories (an id already stored or added is left as it is; an
        item with a `reinforce` target bumps that item's count instead); the version after."""
        now = time.time()
        results: list[AddedMemory] = []
        rows: list[dict[str, Any]] = []
        reinforce: dict[str, int] = {}
        for p in pending:
            if p.id in self._existing:
                results.append(AddedMemory(id=p.id, status="exists"))
                continue
            self._existing.add(p.id)
            if p.reinforce:
                reinforce[p.reinforce] = reinforce.get(p.reinforce, 0) + 1
                results.append(AddedMemory(id=p.id, status="reinforced", reinforced_id=p.reinforce))
                continue
            d = p.draft
            rows.append(
                {
                    "domain": self.domain,
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
        if not rows and not reinforce:
            return version, results
        version += 1
        for row in rows:
            row["seq"] = version
            self._inserts[row["id"]] = row
        for target, count in sorted(reinforce.items()):
            added = self._inserts.get(target)
            if added is not None:  # added earlier in this batch: not in the table yet
                added.update(reinforced=added["reinforced"] + count, updated_at=now, seq=version)
                continue
            stored = self._reinforce.setdefault(target, {"b_count": 0})
            stored.update(b_count=stored["b_count"] + count, b_now=now, b_seq=version)
        return version, results

    def flush(self, session: Session) -> None:
        """Write what the steps added (in the caller's transaction)."""
        if self._inserts:
            session.execute(tables.memories.insert(), list(self._inserts.values()))
        if self._reinforce:
            session.execute(
                _REINFORCE,
                [
                    {"b_domain": self.domain, "b_id": target, **values}
                    for target, values in sorted(self._reinforce.items())
                ],
            )
        self._inserts, self._reinforce = {}, {}


def insert_memories(
    session: Session, domain: str, version: int, pending: Sequence[PendingMemory]
) -> tuple[int, list[AddedMemory]]:
    """Append memories; an item whose id exists is left as it is, and an item with a
    `reinforce` target bumps that item's count instead of adding a near-duplicate."""
    batch = MemoryBatch(session, domain, [p.id for p in pending])
    after, results = batch.add(version, pending)
    if after != version:
        bump_version(session, domain, version)
    batch.flush(session)
    return after, results
