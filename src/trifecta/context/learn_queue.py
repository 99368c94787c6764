"""The durable learn queue of one shard: `context_learn_queue`, beside the domain's rows.

`enqueue` commits the trajectory and returns its ticket: that commit is the acknowledgement,
so an acknowledged trajectory survives the process (kill -9 included; on SQLite WAL with
`synchronous=NORMAL` it survives a process crash, not a power cut). The learning worker
reads pending rows in queue order and marks each `done` inside the transaction that writes
its learning (`mark_done`), so a row is either pending or its effects are committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from trifecta.context import tables
from trifecta.context.sql import check_readable, insert_for
from trifecta.context.trajectory import Trajectory
from trifecta.core.db import transaction

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


class LearnQueue:
    def __init__(self, engine: Engine):
        self.engine = engine

    def enqueue(self, domain: str, trajectory: Trajectory) -> LearnTicket:
        """Store the trajectory (once per domain and trajectory id) and acknowledge it.
        Raises `DomainMoved` if a move fenced the domain off this shard."""
        now = time.time()
        with transaction(self.engine, write=True) as session:
            check_readable(session, domain)
            stmt = insert_for(session, tables.learn_queue).values(
                domain=domain,
                trajectory_id=trajectory.id,
                capsule_id=trajectory.capsule_id,
                payload=trajectory.model_dump_json(),
                state="pending",
                attempts=0,
                submitted_at=now,
            )
            inserted = session.execute(
                stmt.on_conflict_do_nothing(index_elements=["domain", "trajectory_id"]).returning(
                    Q.id
                )
            ).first()
            if inserted is not None:
                return LearnTicket(
                    trajectory_id=trajectory.id,
                    domain=domain,
                    position=int(inserted[0]),
                    submitted_at=now,
                    duplicate=False,
                )
            row = session.execute(
                select(Q.id, Q.submitted_at).where(
                    Q.domain == domain, Q.trajectory_id == trajectory.id
                )
            ).one()
        return LearnTicket(
            trajectory_id=trajectory.id,
            domain=domain,
            position=int(row.id),
            submitted_at=float(row.submitted_at),
            duplicate=True,
        )

    def pending(self, limit: int) -> list[Queued]:
        """The oldest pending rows of every domain of this shard, in queue order."""
        with transaction(self.engine) as session:
            rows = session.execute(
                select(Q.id, Q.domain, Q.payload, Q.attempts)
                .where(Q.state == "pending")
                .order_by(Q.id)
                .limit(limit)
            ).all()
        found = []
        for r in rows:
            try:
                found.append(
                    Queued(
                        int(r.id), r.domain, Trajectory.model_validate_json(r.payload), r.attempts
                    )
                )
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
    rows = session.execute(select(Q.id).where(Q.id.in_(ids), Q.state == "pending"))
    return {int(r[0]) for r in rows}


def mark_done(
    session: Session, row_id: int, version: int, result: dict[str, Any], state: str = "done"
) -> None:
    """Close a row in the transaction that wrote its learning."""
    session.execute(
        update(tables.learn_queue)
        .where(Q.id == row_id)
        .values(state=state, version=version, result=result, done_at=time.time(), error=None)
    )
