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
from dataclasses import dataclass, replace
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
    resolve,
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
from trifecta.core.errors import NotFound, TrifectaError

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
    batch = DeltaBatch(session, domain, [delta])
    result = batch.merge(version, delta, vectors, settings)
    if result.version != version and write_version:
        bump_version(session, domain, version)
    batch.flush(session)
    return result


def _grows(delta: Delta) -> bool:
    # Only new or edited text can duplicate a bullet or outgrow the budget, so a delta of
    # TAGs and REMOVEs loads just the bullets it names.
    return any(isinstance(op, AddOp | UpdateOp) for op in delta.ops)


class DeltaBatch:
    """The deltas of several steps of one transaction under the domain's lock, merged one
    after the other on one in-memory copy of the bullets they touch and written at `flush`:
    one read of the applied op ids and one of the bullets for the whole batch, one
    executemany per kind of row, instead of that round of statements (and a savepoint) per
    delta. The learner's trajectories each carry a delta (their TAGs), and those rounds
    were most of its SQL. The rows end as merging each delta alone leaves them: a bullet
    is written with its state after the last delta that changed it and that delta's
    version, and a delta refused (`NotFound`, `Conflict`) leaves the state as it found it."""

    def __init__(self, session: Session, domain: str, deltas: Sequence[Delta]):
        self.domain = domain
        op_ids = sorted({op.op_id for d in deltas for op in d.ops})
        self._applied = (
            {str(r[0]) for r in session.execute(_APPLIED, {"b_domain": domain, "b_ops": op_ids})}
            if op_ids
            else set()
        )
        self._whole = any(_grows(d) for d in deltas)
        refs: set[str] = set().union(*(referenced_ids(d.ops) for d in deltas))
        self.state, self._vectors = (
            _load_for_merge(session, domain, refs, whole=self._whole) if deltas else ({}, {})
        )
        self._existed = set(self.state)
        self._seq: dict[str, int] = {}  # bullet id -> version of its last change
        self._embedded: set[str] = set()  # bullets whose content changed: write the vector
        self._ops: list[dict[str, Any]] = []

    def merge(
        self,
        version: int,
        delta: Delta,
        vectors: Mapping[str, Vector],
        settings: ContextSettings,
    ) -> DeltaResult:
        """One step: merge `delta` at `version`; the result carries the version after it
        (unchanged if every op was applied before). Raises NotFound / Conflict naming the
        op, with the state as before the call."""
        grows = _grows(delta)
        if grows and not self._whole:
            raise ValueError("delta: it adds text, but the batch was not built with it")
        now = time.time()
        op_ids = [op.op_id for op in delta.ops]
        applied = {o for o in op_ids if o in self._applied}
        if applied.issuperset(op_ids):
            return DeltaResult(
                domain=self.domain,
                version=version,
                applied=[],
                skipped=op_ids,
                ignored=[],
                added=[],
                merged={},
                evicted=[],
                bullets=[],
            )
        state = self.state
        before = {bid: (b.key(), b.updated_at) for bid, b in state.items()}
        kept = self._undo_copies(delta)
        try:
            report = apply_ops(
                state,
                applied,
                delta.ops,
                now=now,
                prune_margin=settings.prune_margin,
                count_tokens=count_tokens,
            )
        except TrifectaError:
            for bid in set(state) - set(before):
                del state[bid]
            state.update(kept)
            raise
        for bid in report.content_changed:
            self._vectors[bid] = vectors[state[bid].content]
        report.merged = merge_duplicates(
            state,
            report.content_changed,
            self._vectors,
            threshold=settings.dedup_threshold,
            now=now,
            prune_margin=settings.prune_margin,
        )
        if grows:
            report.evicted = evict_over_budget(state, settings.playbook_token_budget, now=now)
        version += 1
        for bid, bullet in state.items():
            was = before.get(bid)
            if was is None or was[0] != bullet.key():
                self._seq[bid] = version
            else:  # not written: keep what the table holds, as a later step would read it
                bullet.updated_at = was[1]
        self._embedded |= report.content_changed
        recorded = set(report.applied + report.ignored)
        self._applied |= recorded
        self._ops += [
            {"domain": self.domain, "op_id": op_id, "applied_at": now, "seq": version}
            for op_id in op_ids
            if op_id in recorded
        ]
        changed = {bid for bid, seq in self._seq.items() if seq == version}
        return DeltaResult(
            domain=self.domain,
            version=version,
            applied=report.applied,
            skipped=report.skipped,
            ignored=report.ignored,
            added=report.added,
            merged=report.merged,
            evicted=report.evicted,
            bullets=[state[b].to_model() for b in sorted(changed | report.touched)],
        )

    def _undo_copies(self, delta: Delta) -> dict[str, BulletState]:
        """Copies of the bullets `apply_ops` may change for this delta (the targets its ops
        resolve to), to put back if it refuses the delta; the bullets it adds are dropped."""
        kept: dict[str, BulletState] = {}
        for op in delta.ops:
            if isinstance(op, AddOp):
                continue
            try:
                target = resolve(self.state, op.bullet_id, "bullet_id")
            except NotFound:
                continue
            kept.setdefault(target.id, replace(target))
        return kept

    def flush(self, session: Session) -> None:
        """Write what the steps changed (in the caller's transaction)."""
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        for bid, seq in self._seq.items():
            bullet = self.state[bid]
            row = {**bullet.__dict__, "status": bullet.status.value, "seq": seq}
            if bid in self._embedded:
                row["embedding"] = to_bytes(self._vectors[bid])
            if bid in self._existed:
                updates.append(row)
            else:
                inserts.append({"domain": self.domain, **row})
        _update_bullets(session, self.domain, updates)
        for keys in {tuple(r) for r in inserts}:  # rows with and without an embedding
            session.execute(tables.bullets.insert(), [r for r in inserts if tuple(r) == keys])
        if self._ops:
            session.execute(tables.applied_ops.insert(), self._ops)
        self._existed |= set(self._seq)
        self._seq, self._embedded, self._ops = {}, set(), []


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
