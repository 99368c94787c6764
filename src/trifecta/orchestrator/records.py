"""The request log: every served task with its path, verdict and charges, in one transaction.

It also answers the playbook's "cached responses" (Phase 1): a capsule asking again exactly
what it asked before gets the earlier answer when that answer was verified correct (by the
task verifier or the client's feedback), without running a model. An in-process filter of the
(capsule, prompt) pairs with a correct answer spares a database query on every miss; a hit is
confirmed against the database, so feedback recorded by another process is respected. (Answers
another process verified are found after a restart: the filter is loaded at start-up.) The
filter has a fixed size, so a server's memory does not grow with the prompts it has seen.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Sequence

from sqlalchemy import ColumnElement, Engine, Table, and_, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from trifecta.core.db import RowRead, ensure_schema, transaction
from trifecta.core.errors import NotFound
from trifecta.core.group_commit import GroupCommit
from trifecta.orchestrator.ledger import Charge, CostLedger
from trifecta.orchestrator.models import TaskResult
from trifecta.orchestrator.tables import charges as charges_table
from trifecta.orchestrator.tables import requests

# A request's row in the request log and its rows in the ledger, written together.
SavedRows = tuple[dict[str, object], list[dict[str, object]]]


def _correct() -> ColumnElement[bool]:
    """An answer the client confirmed, or that the verifier judged right and the client did
    not overrule."""
    return and_(
        requests.c.answer.is_not(None),
        or_(
            requests.c.feedback.is_(True),
            and_(requests.c.feedback.is_(None), requests.c.verified.is_(True)),
        ),
    )


# The response cache's read: the latest correct answer to exactly this prompt (the hash finds
# the rows through the index; the prompt itself settles a collision), one row.
_CACHED = (
    select(requests.c.answer, requests.c.id)
    .where(
        requests.c.capsule_id == bindparam("b_capsule"),
        requests.c.prompt_hash == bindparam("b_hash"),
        requests.c.prompt == bindparam("b_prompt"),
        _correct(),
    )
    .order_by(requests.c.created_at.desc())
    .limit(1)
)


class RowsInsert:
    """One table's INSERT, compiled once for the engine's dialect, run with many rows through
    the driver's `executemany` (`exec_driver_sql`): each row's values go through its column
    types' bind processors (JSON, DateTime, Boolean) as SQLAlchemy's own INSERT would, but the
    statement is not built, keyed, looked up and parameter-processed anew each group. The
    request log's two INSERTs cost more in SQLAlchemy's execution path than in SQLite."""

    def __init__(self, engine: Engine, table: Table):
        dialect = engine.dialect
        self.columns = [
            c.key for c in table.columns if not (c.primary_key and c.autoincrement is True)
        ]
        compiled = (
            table.insert().values({k: bindparam(k) for k in self.columns}).compile(dialect=dialect)
        )
        self.sql = compiled.string
        order = list(compiled.positiontup or ()) if dialect.positional else self.columns
        processors = {
            c.key: c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns
        }
        self._order = [(name, processors.get(name)) for name in order]
        self._positional = dialect.positional

    def params(self, row: dict[str, object]) -> tuple[object, ...] | dict[str, object]:
        values = [(n, row[n] if p is None else p(row[n])) for n, p in self._order]
        return tuple(v for _, v in values) if self._positional else dict(values)


def prompt_hash(prompt: str) -> str:
    return hashlib.blake2b(prompt.encode(), digest_size=16).hexdigest()


class AnsweredFilter:
    """Which (capsule, prompt hash) pairs may have a correct answer on record: a bitmap indexed
    by one hash of the pair (a Bloom filter with one hash function; a few lines, no library
    needed). "No" is always right; a false "maybe" costs one indexed query that finds nothing.
    At 2**23 bits (1 MiB) a million answered pairs leave about 11% of misses a query (set
    a bit per pair: 1 - e^(-n/m)); a set of the pairs grew without bound with the traffic."""

    def __init__(self, bits: int = 1 << 23):
        self._bits = bytearray(bits // 8)
        self._size = bits

    def _index(self, capsule_id: str, hashed_prompt: str) -> int:
        key = hashlib.blake2b(f"{capsule_id}\x00{hashed_prompt}".encode(), digest_size=8)
        return int.from_bytes(key.digest(), "little") % self._size

    def add(self, capsule_id: str, hashed_prompt: str) -> None:
        i = self._index(capsule_id, hashed_prompt)
        self._bits[i >> 3] |= 1 << (i & 7)

    def may_contain(self, capsule_id: str, hashed_prompt: str) -> bool:
        i = self._index(capsule_id, hashed_prompt)
        return bool(self._bits[i >> 3] & (1 << (i & 7)))


class RequestLog:
    def __init__(self, engine: Engine, ledger: CostLedger):
        self.engine = engine
        self.ledger = ledger
        ensure_schema(engine, "trifecta.orchestrator")
        self._answered = AnsweredFilter()
        self._lock = threading.Lock()
        # Requests finishing together are logged in one transaction (`GroupCommit`).
        self._saves: GroupCommit[SavedRows, bool] = GroupCommit(self._save_group)
        self._requests_insert = RowsInsert(engine, requests)
        self._cached = RowRead(engine, _CACHED)
        self._charges_insert = RowsInsert(engine, charges_table)
        with transaction(engine) as session:
            rows = session.execute(
                select(requests.c.capsule_id, requests.c.prompt_hash).where(_correct()).distinct()
            )
            for capsule_id, hashed in rows:
                self._answered.add(str(capsule_id), str(hashed))

    def save(
        self,
        result: TaskResult,
        *,
        capsule_kind: str,
        charges: Sequence[Charge],
        difficulty: int | None,
        run_id: str | None,
    ) -> None:
        at = dt.datetime.now(dt.UTC)
        hashed = prompt_hash(result.prompt)
        row: dict[str, object] = {
            "id": result.id,
            "capsule_id": result.capsule_id,
            "run_id": run_id,
            "prompt": result.prompt,
            "prompt_hash": hashed,
            "answer": result.answer,
            "route": result.route,
            "path": result.path,
            "environment": result.environment,
            "verified": result.verified,
            "feedback": None,
            "difficulty": difficulty,
            "latency_ms": result.latency_ms,
            "tokens": sum(h.tokens for h in result.hops),
            "cost_usd": result.cost.usd,
            "detail": result.model_dump(mode="json"),
            "created_at": at,
        }
        charged = CostLedger.rows(
            request_id=result.id,
            capsule_id=result.capsule_id,
            capsule_kind=capsule_kind,
            items=charges,
            at=at,
        )
        self._saves.submit((row, charged))  # returns once committed
        if result.answer is not None and result.verified is True:
            with self._lock:
                self._answered.add(result.capsule_id, hashed)

    def _save_group(self, group: list[SavedRows]) -> list[bool | BaseException]:
        """The requests and their charges, two multi-row inserts in one transaction. A row
        the database refuses (a request id already logged) would spoil the rest: then each
        is written alone, so only its own caller gets the error."""
        try:
            # A Core connection, not a session: two INSERTs need none of the ORM's work per
            # transaction and statement (a save alone 453 -> 374 us of CPU, measured here).
            # They read nothing first, so SQLite's deferred BEGIN takes the write lock safely.
            with self.engine.begin() as connection:
                for insert, rows in (
                    (self._requests_insert, [row for row, _ in group]),
                    (self._charges_insert, [c for _, charged in group for c in charged]),
                ):
                    if rows:
                        connection.exec_driver_sql(insert.sql, [insert.params(r) for r in rows])
            return [True] * len(group)
        except IntegrityError:
            if len(group) == 1:
                raise
        out: list[bool | BaseException] = []
        for item in group:
            try:
                out.extend(self._save_group([item]))
            except IntegrityError as exc:
                out.append(exc)
        return out

    def get(self, request_id: str, capsule_id: str) -> TaskResult:
        with transaction(self.engine) as session:
            detail = session.execute(
                select(requests.c.detail).where(
                    requests.c.id == request_id, requests.c.capsule_id == capsule_id
                )
            ).scalar_one_or_none()
        if detail is None:
            raise NotFound(f"capsule {capsule_id!r} has no task {request_id!r}", field="task_id")
        return TaskResult.model_validate(detail)

    def find(self, request_id: str) -> TaskResult | None:
        with transaction(self.engine) as session:
            detail = session.execute(
                select(requests.c.detail).where(requests.c.id == request_id)
            ).scalar_one_or_none()
        return TaskResult.model_validate(detail) if detail is not None else None

    def cached_answer(self, capsule_id: str, prompt: str) -> tuple[str, str] | None:
        """(answer, request id) of the capsule's latest correct answer to exactly `prompt`."""
        hashed = prompt_hash(prompt)
        with self._lock:
            if not self._answered.may_contain(capsule_id, hashed):
                return None
        # About a fifth of the loop's requests are maybe-hits (the shipped fleet repeats
        # prompts): one statement on a driver connection, not a SQLAlchemy connection's
        # BEGIN and ROLLBACK around it (`RowRead`).
        found = self._cached.read(b_capsule=capsule_id, b_hash=hashed, b_prompt=prompt)
        return None if found is None else (str(found[0]), str(found[1]))

    def set_feedback(self, request_id: str, capsule_id: str, success: bool) -> None:
        with transaction(self.engine, write=True) as session:
            found = session.execute(
                update(requests)
                .where(requests.c.id == request_id, requests.c.capsule_id == capsule_id)
                .values(feedback=success)
                .returning(requests.c.prompt_hash)
            ).scalar_one_or_none()
        if found is None:
            raise NotFound(f"capsule {capsule_id!r} has no task {request_id!r}", field="task_id")
        if success:
            with self._lock:
                self._answered.add(capsule_id, str(found))

    def count(self, *, run_id: str | None = None) -> int:
        query = select(func.count()).select_from(requests)
        if run_id is not None:
            query = query.where(requests.c.run_id == run_id)
        with transaction(self.engine) as session:
            return int(session.execute(query).scalar_one())

    def usd(self, *, run_id: str | None = None) -> float:
        query = select(func.coalesce(func.sum(requests.c.cost_usd), 0.0))
        if run_id is not None:
            query = query.where(requests.c.run_id == run_id)
        with transaction(self.engine) as session:
            return float(session.execute(query).scalar_one())
