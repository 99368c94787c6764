"""The durable learn queue of one shard: `context_learn_queue`, beside the domain's rows.

`enqueue` commits the trajectory and returns its ticket: that commit is the acknowledgement,
so an acknowledged trajectory survives the process (kill -9 included; on SQLite WAL with
`synchronous=NORMAL` it survives a process crash, not a power cut). Trajectories enqueued
at the same moment by several request threads share one transaction and one multi-row INSERT
(`core.group_commit`): each caller still returns only once its row is committed. The learning worker
reads pending rows in queue order and marks each `done` inside the transaction that writes
its learning (`mark_done`), so a row is either pending or its effects are committed.

A row may carry the request's query embedding (`query_vector`, float32 bytes): the memory
learned from it is then keyed by that vector, which the request's retrieval already computed,
so the worker embeds nothing for it (`learn_batch`). It is stored with the trajectory, so a
row recovered after a crash is keyed exactly as it would have been.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine, bindparam, func, select, update
from sqlalchemy.exc import DBAPIError
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
from trifecta.core.group_commit import GroupCommit

Q = tables.learn_queue.c


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


def _tickets(
    items: Sequence[Item],
    inserted: Mapping[tuple[str, str], int],
    earlier: Mapping[tuple[str, str], tuple[int, float]],
    now: float,
) -> dict[tuple[str, str], list[LearnTicket]]:
    """Per (domain, trajectory id), the tickets of the items in the order they were handed
    in: the first of an inserted row is new, the rest (and a row queued before) duplicates.
    Items neither inserted nor queued before (a fenced domain's) get none."""
    tickets: dict[tuple[str, str], list[LearnTicket]] = {}
    for domain, trajectory, _ in items:
        key = (domain, trajectory.id)
        if key in inserted:
            position, submitted = inserted[key], now
        elif key in earlier:
            position, submitted = earlier[key]
        else:
            continue
        first = key in inserted and key not in tickets
        tickets.setdefault(key, []).append(
            LearnTicket.model_construct(  # every field set here, from validated values
                trajectory_id=trajectory.id,
                domain=domain,
                position=position,
                submitted_at=submitted,
                duplicate=not first,
            )
        )
    return tickets


def _answers(
    items: Sequence[Item],
    fenced: Mapping[str, DomainMoved | None],
    tickets: dict[tuple[str, str], list[LearnTicket]],
) -> list[LearnTicket | BaseException]:
    """Per item, in order: its ticket, or its domain's refusal."""
    return [
        refusal if (refusal := fenced.get(domain)) is not None else tickets[(domain, t.id)].pop(0)
        for domain, t, _ in items
    ]


_DRIVER_INSERTS: dict[tuple[str, int], str] = {}  # (dialect, group size) -> the statement
# Each column typed in the VALUES list on Postgres: a column whose rows are all NULL (no query
# vector) would otherwise be read as text, which a bytea column refuses.
_ROW = {
    "sqlite": "(?, ?, ?, ?, ?, ?)",
    "postgresql": "(%s::varchar, %s::varchar, %s::varchar, %s::text, %s::float8, %s::bytea)",
}


def _driver_insert(dialect: str, size: int) -> str:
    """The group's INSERT as the driver runs it: the rows from a VALUES list, those of a
    domain a move fenced left out, a trajectory already queued skipped by the unique index."""
    sql = _DRIVER_INSERTS.get((dialect, size))
    if sql is None:
        rows = ", ".join([_ROW[dialect]] * size)
        sql = _DRIVER_INSERTS[(dialect, size)] = (
            f"INSERT INTO {tables.learn_queue.name} (domain, trajectory_id, capsule_id,"
            " payload, state, attempts, submitted_at, query_vector)"
            " SELECT v.column1, v.column2, v.column3, v.column4, 'pending', 0, v.column5,"
            f" v.column6 FROM (VALUES {rows}) AS v WHERE NOT EXISTS (SELECT 1 FROM"
            f" {tables.domains.name} AS d WHERE d.domain = v.column1 AND d.state = 'moved')"
            " ON CONFLICT (domain, trajectory_id) DO NOTHING"
            " RETURNING id, domain, trajectory_id"
        )
    return sql


def _driver_missing(
    db: Any, mark: str, missing: set[tuple[str, str]]
) -> tuple[dict[str, DomainMoved | None], dict[tuple[str, str], tuple[int, float]]]:
    """For the items the INSERT skipped, read in its transaction on the driver's connection
    `db` (`mark`: its placeholder): the fenced domains with their refusal, and the rows
    queued before of the others."""
    fenced: dict[str, DomainMoved | None] = {}
    earlier: dict[tuple[str, str], tuple[int, float]] = {}
    for domain in sorted({d for d, _ in missing}):
        row = db.execute(
            f"SELECT state, moved_to FROM {tables.domains.name} WHERE domain = {mark}", (domain,)
        ).fetchone()
        if row is not None and row[0] == "moved":
            fenced[domain] = DomainMoved(domain, row[1])
            continue
        ids = sorted(t for d, t in missing if d == domain)
        marks = ", ".join([mark] * len(ids))
        for position, trajectory_id, submitted in db.execute(
            f"SELECT id, trajectory_id, submitted_at FROM {tables.learn_queue.name}"
            f" WHERE domain = {mark} AND trajectory_id IN ({marks})",
            (domain, *ids),
        ).fetchall():
            earlier[(domain, trajectory_id)] = (int(position), float(submitted))
    return fenced, earlier


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
        """One transaction, and one statement, for the trajectories enqueued together, on
        the pooled driver connection: the INSERT skips the items of a fenced domain itself
        (`NOT EXISTS`), so the fences and earlier rows are read only when an item was not
        inserted (a repeat, or a move: both rare), and nothing is rolled back. A submit
        pays this on the request path, holding the interpreter lock beside the reads:
        SQLAlchemy's execution of a Core INSERT and of the fence read cost about 150 of an
        enqueue's 190 us of CPU on SQLite, and on Postgres (where the Core path remained)
        1.0 ms of CPU a submit at the median in the benchmark's loop workload. Errors are
        raised as SQLAlchemy's (a lost connection leaves the pool, as a session's would)."""
        now = time.time()
        dialect = self.engine.dialect
        postgres = dialect.name == "postgresql"
        sql = _driver_insert(dialect.name, len(items))
        params: list[object] = []
        for domain, trajectory, vector in items:
            params += (
                domain,
                trajectory.id,
                trajectory.capsule_id,
                trajectory.model_dump_json(),
                now,
                None if vector is None else to_bytes(vector),
            )
        error = dialect.loaded_dbapi.Error
        pooled = self.engine.raw_connection()
        try:
            db = pooled.driver_connection
            assert db is not None
            if not postgres:  # psycopg opens its transaction at the first statement
                db.execute("BEGIN IMMEDIATE")  # SQLite's write lock, with the busy timeout
            try:
                inserted = {(d, t): int(i) for i, d, t in db.execute(sql, params).fetchall()}
                missing = {(d, t.id) for d, t, _ in items} - set(inserted)
                mark = "%s" if postgres else "?"
                fenced, earlier = _driver_missing(db, mark, missing) if missing else ({}, {})
                db.commit() if postgres else db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(error):
                    db.rollback() if postgres else db.execute("ROLLBACK")
                raise
        except error as exc:
            lost = dialect.is_disconnect(exc, pooled, None)
            if lost:
                pooled.invalidate(exc)
            raise DBAPIError.instance(
                sql, None, exc, error, connection_invalidated=lost, dialect=dialect
            ) from exc
        finally:
            pooled.close()
        return _answers(items, fenced, _tickets(items, inserted, earlier, now))

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
