"""The durable learn queue of one shard: `context_learn_queue`, beside the domain's rows.

`enqueue` commits the trajectory and returns its ticket: that commit is the acknowledgement,
so an acknowledged trajectory survives the process (kill -9 included; on SQLite WAL with
`synchronous=NORMAL` it survives a process crash, not a power cut). Trajectories enqueued
at the same moment by several request threads share one transaction and one multi-row INSERT
(`GroupCommit`): each caller still returns only once its row is committed. The learning worker
reads pending rows in queue order and marks each `done` inside the transaction that writes
its learning (`mark_done`), so a row is either pending or its effects are committed.

A row may carry the request's query embedding (`query_vector`, float32 bytes): the memory
learned from it is then keyed by that vector, which the request's retrieval already computed,
so the worker embeds nothing for it (`learn_batch`). It is stored with the trajectory, so a
row recovered after a crash is keyed exactly as it would have been.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Connection, Engine, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from trifecta.context import tables
from trifecta.context.sql import (
    DomainMoved,
    Vector,
    to_bytes,
    vector_or_none,
)
from trifecta.context.trajectory import Trajectory
from trifecta.core.db import transaction

Q = tables.learn_queue.c
T = TypeVar("T")
R = TypeVar("R")
MAX_GROUP = 64  # items one transaction takes; the rest go in the next


@dataclass
class _Pending(Generic[T, R]):
    item: T
    result: R | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommit(Generic[T, R]):
    """Writes that callers hand in one at a time, committed several to a transaction (group
    commit, as databases batch their log flushes). The first caller that finds its item
    waiting and no write running writes every waiting item with one call of `write`; the
    others wait for the write that holds theirs. `write` returns, per item and in order,
    its result or the exception that caller should raise. A caller alone pays one write,
    as before; written by hand: no library does this for a synchronous SQLAlchemy engine."""

    def __init__(self, write: Callable[[list[T]], Sequence[R | BaseException]]):
        self._write = write
        self._waiting: list[_Pending[T, R]] = []
        self._busy = False
        self._cond = threading.Condition()
        self.writes = self.items = 0

    def submit(self, item: T) -> R:
        mine: _Pending[T, R] = _Pending(item)
        with self._cond:
            self._waiting.append(mine)
        while True:
            with self._cond:
                while not mine.done and self._busy:
                    self._cond.wait()
                if mine.done:
                    break
                self._busy = True
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                self.writes += 1
                self.items += len(group)
            try:
                results: Sequence[R | BaseException] = self._write([p.item for p in group])
            except BaseException as exc:  # the transaction failed: every caller in it fails
                results = [exc] * len(group)
            with self._cond:
                for pending, result in zip(group, results, strict=True):
                    if isinstance(result, BaseException):
                        pending.error = result
                    else:
                        pending.result = result
                    pending.done = True
                self._busy = False
                self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result


class LearnTicket(BaseModel):
    """The acknowledgement of `ContextService.submit`: the trajectory is stored in its domain's
    shard and will be learned from, in order, exactly once."""

    trajectory_id: str
    domain: str
    position: int = Field(description="the row's place in its shard's queue (ascending)")
    submitted_at: float
    duplicate: bool = Field(description="the trajectory was queued before; nothing was added")


class QueueRow(BaseModel):
    """A queue row as stored, for inspection."""

    position: int
    domain: str
    trajectory_id: str
    state: str = Field(description="pending, done, failed, moved")
    attempts: int
    version: int | None = Field(description="the domain's version after learning")
    result: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class Queued:
    """A pending row read by the worker; `trajectory` is None if the payload no longer parses."""

    id: int
    domain: str
    trajectory: Trajectory | None
    attempts: int
    problem: str | None = None
    query_vector: Vector | None = None  # the request's query embedding, if it came with one


Item = tuple[str, Trajectory, Vector | None]  # domain, trajectory, its query vector


_DOMAIN_STATE = select(tables.domains.c.state, tables.domains.c.moved_to).where(
    tables.domains.c.domain == bindparam("b_domain")
)
# The worker's reads of the queue, built once (run every batch).
_PENDING = (
    select(Q.id, Q.domain, Q.payload, Q.attempts, Q.query_vector)
    .where(Q.state == "pending")
    .order_by(Q.id)
    .limit(bindparam("b_limit"))
)
_STILL_PENDING = select(Q.id).where(
    Q.id.in_(bindparam("b_ids", expanding=True)), Q.state == "pending"
)
_INSERTS: dict[str, Any] = {}  # dialect name -> the queue's INSERT


def _insert_statement(dialect: str) -> Any:
    """The queue's INSERT ... ON CONFLICT DO NOTHING RETURNING for `dialect` (a trajectory
    already queued is skipped by the unique index)."""
    stmt = _INSERTS.get(dialect)
    if stmt is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = _INSERTS[dialect] = (
            insert(tables.learn_queue)
            .on_conflict_do_nothing(index_elements=["domain", "trajectory_id"])
            .returning(Q.id, Q.domain, Q.trajectory_id)
        )
    return stmt


def _fences(connection: Connection, domains: set[str]) -> dict[str, DomainMoved | None]:
    """The domains among `domains` that a move fenced off this shard, with their refusal."""
    found: dict[str, DomainMoved | None] = {}
    for domain in sorted(domains):
        row = connection.execute(_DOMAIN_STATE, {"b_domain": domain}).first()
        if row is not None and row.state == "moved":
            found[domain] = DomainMoved(domain, row.moved_to)
    return found


class LearnQueue:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._group: GroupCommit[Item, LearnTicket] = GroupCommit(self._enqueue_group)

    def enqueue(
        self, domain: str, trajectory: Trajectory, query_vector: Vector | None = None
    ) -> LearnTicket:
        """Store the trajectory (once per domain and trajectory id), with the query vector
        its memory is keyed by if there is one, and acknowledge it.
        Raises `DomainMoved` if a move fenced the domain off this shard."""
        return self._group.submit((domain, trajectory, query_vector))

    def _enqueue_group(self, items: list[Item]) -> list[LearnTicket | BaseException]:
        """One transaction, and one INSERT, for the trajectories enqueued together; a fenced
        domain refuses its own items only.

        On a Core connection, not a session (an enqueue alone 343 -> 210 us of CPU, measured
        here). The INSERT comes first, so it takes SQLite's write lock with the busy timeout
        as `BEGIN IMMEDIATE` would (no read came before it in the transaction), and the
        fences are read under that lock: a domain found fenced rolls the group back, and
        the others' items are written again without its own (a move is rare)."""
        now = time.time()
        fenced: dict[str, DomainMoved | None] = {}
        while True:
            open_items = [item for item in items if fenced.get(item[0]) is None]
            with self.engine.connect() as connection:
                with connection.begin() as written:
                    tickets = self._insert(connection, open_items, now)
                    found = _fences(connection, {d for d, _, _ in open_items})
                    if found:
                        written.rollback()
                if not found:
                    break
            fenced.update(found)
        return [
            refusal
            if (refusal := fenced.get(domain)) is not None
            else tickets[(domain, t.id)].pop(0)
            for domain, t, _ in items
        ]

    def _insert(
        self, connection: Connection, items: Sequence[Item], now: float
    ) -> dict[tuple[str, str], list[LearnTicket]]:
        """Queue the items with one multi-row INSERT (a trajectory already queued, or twice
        in this group, is skipped by the unique index) and read back the rows of those it
        skipped; per (domain, trajectory id), the tickets in the order they were handed in."""
        if not items:
            return {}
        rows = [
            {
                "domain": domain,
                "trajectory_id": trajectory.id,
                "capsule_id": trajectory.capsule_id,
                "payload": trajectory.model_dump_json(),
                "state": "pending",
                "attempts": 0,
                "submitted_at": now,
                "query_vector": None if vector is None else to_bytes(vector),
            }
            for domain, trajectory, vector in items
        ]
        # One statement object per dialect, executed with the rows (SQLAlchemy renders them
        # as one multi-row INSERT, in order): its compiled form is reused, where an INSERT
        # built with the rows' values was keyed and compiled anew every group.
        inserted = {
            (r.domain, r.trajectory_id): int(r.id)
            for r in connection.execute(_insert_statement(connection.dialect.name), rows)
        }
        earlier: dict[tuple[str, str], tuple[int, float]] = {}
        missing = {(d, t.id) for d, t, _ in items} - set(inserted)
        for domain in {d for d, _ in missing}:
            ids = sorted(t for d, t in missing if d == domain)
            for r in connection.execute(
                select(Q.id, Q.trajectory_id, Q.submitted_at).where(
                    Q.domain == domain, Q.trajectory_id.in_(ids)
                )
            ):
                earlier[(domain, r.trajectory_id)] = (int(r.id), float(r.submitted_at))
        tickets: dict[tuple[str, str], list[LearnTicket]] = {}
        for domain, trajectory, _ in items:
            key = (domain, trajectory.id)
            first = key in inserted and key not in tickets  # the rest of a group: duplicates
            position, submitted = (inserted[key], now) if key in inserted else earlier[key]
            tickets.setdefault(key, []).append(
                LearnTicket(
                    trajectory_id=trajectory.id,
                    domain=domain,
                    position=position,
                    submitted_at=submitted,
                    duplicate=not first,
                )
            )
        return tickets

    def pending(self, limit: int) -> list[Queued]:
        """The oldest pending rows of every domain of this shard, in queue order."""
        with transaction(self.engine) as session:
            rows = session.execute(_PENDING, {"b_limit": limit}).all()
        found = []
        for r in rows:
            try:
                trajectory = Trajectory.model_validate_json(r.payload)
                key = vector_or_none(r.query_vector)
                found.append(Queued(int(r.id), r.domain, trajectory, r.attempts, None, key))
            except ValidationError as exc:
                problem = f"stored trajectory does not parse: {exc.errors()[0]['msg']}"
                found.append(Queued(int(r.id), r.domain, None, r.attempts, problem))
        return found

    def pending_count(self) -> int:
        with transaction(self.engine) as session:
            return int(
                session.execute(
                    select(func.count()).select_from(tables.learn_queue).where(Q.state == "pending")
                ).scalar_one()
            )

    def settle(self, ids: list[int], state: str, error: str | None = None) -> None:
        """Close rows that will not be learned here: `failed` (refused) or `moved` (handed
        to the domain's new shard)."""
        if not ids:
            return
        with transaction(self.engine, write=True) as session:
            session.execute(
                update(tables.learn_queue)
                .where(Q.id.in_(ids), Q.state == "pending")
                .values(state=state, error=error, done_at=time.time())
            )

    def retry_later(self, ids: list[int], error: str) -> None:
        """Count a failed attempt; the rows stay pending."""
        if not ids:
            return
        with transaction(self.engine, write=True) as session:
            session.execute(
                update(tables.learn_queue)
                .where(Q.id.in_(ids), Q.state == "pending")
                .values(attempts=Q.attempts + 1, error=error)
            )

    def rows(self, domain: str) -> list[QueueRow]:
        with transaction(self.engine) as session:
            found = session.execute(
                select(tables.learn_queue).where(Q.domain == domain).order_by(Q.id)
            ).all()
        return [
            QueueRow(
                position=int(r.id),
                domain=r.domain,
                trajectory_id=r.trajectory_id,
                state=r.state,
                attempts=r.attempts,
                version=r.version,
                result=r.result,
                error=r.error,
            )
            for r in found
        ]


def still_pending(session: Session, ids: list[int]) -> set[int]:
    """Which of these rows are pending, read under the domain lock the caller holds."""
    if not ids:
        return set()
    rows = session.execute(_STILL_PENDING, {"b_ids": ids})
    return {int(r[0]) for r in rows}


# Built once: closing a batch's rows is one executemany of one compiled statement.
_MARK_DONE = (
    update(tables.learn_queue)
    .where(Q.id == bindparam("b_id"))
    .values(
        state=bindparam("b_state"),
        version=bindparam("b_version"),
        result=bindparam("b_result", type_=tables.learn_queue.c.result.type),
        done_at=bindparam("b_done_at"),
        error=None,
    )
)

Done = tuple[int, int, dict[str, Any], str]  # row id, version, result, state


def mark_done(
    session: Session, row_id: int, version: int, result: dict[str, Any], state: str = "done"
) -> None:
    """Close a row in the transaction that wrote its learning."""
    mark_done_many(session, [(row_id, version, result, state)])


def mark_done_many(session: Session, rows: Sequence[Done]) -> None:
    """Close rows in the transaction that wrote their learning."""
    if not rows:
        return
    now = time.time()
    session.execute(
        _MARK_DONE,
        [
            {"b_id": i, "b_state": state, "b_version": v, "b_result": result, "b_done_at": now}
            for i, v, result, state in rows
        ],
    )
