"""Copying a domain between shards while it keeps taking writes: migrate and online move.

copy (bulk, by primary key, in batches) -> catch up (rows with seq > watermark, repeated
until little changes) -> fence (the source domain row is marked moved under the domain's
write lock, so no write commits there any more) -> final catch-up -> verify (row counts and
content checksums per table) -> switch (the caller re-points the shard map) -> optionally
delete the source rows. Writers that hit the fence re-route and retry, so none is lost.

Progress lives in the target (`context_copy_progress`), committed with each batch, so an
interrupted copy resumes at the batch after the last one that committed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import create_engine, delete, func, inspect, select, tuple_, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from trifecta.context import tables
from trifecta.context.sql import lock_domain, read_domain, upsert
from trifecta.context.store import ShardStore
from trifecta.core.db import is_sqlite, normalize_url, transaction
from trifecta.core.errors import Conflict, InvalidInput
from trifecta.core.logging import get_logger

log = get_logger(__name__)
# (domain, table, rows copied so far in this phase, phase name)
ProgressCallback = Callable[[str, str, int, str], None]


class TableCheck(BaseModel):
    table: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str

    @property
    def matches(self) -> bool:
        return self.source_rows == self.target_rows and self.source_checksum == self.target_checksum


class CopyReport(BaseModel):
    domain: str
    source: str
    target: str
    resumed: bool
    copied_rows: int
    catch_up_passes: int
    final_version: int
    checks: list[TableCheck]
    verified: bool
    switched: bool
    source_deleted: bool
    seconds: float


def fingerprint(store: ShardStore) -> str:
    return hashlib.blake2b(store.label.encode(), digest_size=20).hexdigest()


def table_check(store: ShardStore, domain: str, name: str) -> tuple[int, str]:
    """(rows, sha256 over the rows in key order) of one domain's table."""
    table, keys = tables.DATA_TABLES[name]
    digest = hashlib.sha256()
    count = 0
    with transaction(store.engine) as session:
        result = session.execute(
            select(table).where(table.c.domain == domain).order_by(*(table.c[k] for k in keys))
        )
        for row in result:
            values = [v.hex() if isinstance(v, bytes) else v for v in row]
            digest.update(json.dumps(values, separators=(",", ":")).encode())
            count += 1
    return count, digest.hexdigest()


class DomainCopier:
    def __init__(
        self,
        source: ShardStore,
        target: ShardStore,
        *,
        batch_size: int = 500,
        max_passes: int = 50,
        progress: ProgressCallback | None = None,
    ):
        if source.url == target.url:
            raise Conflict("source and target are the same database", field="to")
        self.source, self.target = source, target
        self.batch_size = batch_size
        self.max_passes = max_passes
        self.progress = progress
        self.key = fingerprint(source)

    # -- progress record ---------------------------------------------------------------
    def _load(self, domain: str) -> dict[str, Any] | None:
        with transaction(self.target.engine) as session:
            row = session.execute(
                select(tables.copy_progress).where(
                    tables.copy_progress.c.domain == domain,
                    tables.copy_progress.c.source == self.key,
                )
            ).first()
        return dict(row._mapping) if row else None

    def _save(self, session: Any, state: dict[str, Any]) -> None:
        state["updated_at"] = time.time()
        upsert(session, tables.copy_progress, [state], ["domain", "source"])

    def _save_now(self, state: dict[str, Any]) -> None:
        with transaction(self.target.engine, write=True) as session:
            self._save(session, state)

    # -- the copy ----------------------------------------------------------------------
    def run(
        self,
        domain: str,
        *,
        switch: Callable[[], None] | None = None,
        delete_source: bool = False,
    ) -> CopyReport:
        started = time.monotonic()
        with transaction(self.source.engine) as session:
            version, src_state, moved_to = read_domain(session, domain)
        fenced = src_state == "moved"
        if fenced and moved_to != self.target.label:
            raise Conflict(
                f"domain {domain!r} has already moved off {self.source.label}", field="domain"
            )
        state = self._load(domain)
        if state is not None and (
            state["phase"] in ("done", "failed")
            or (not fenced and state["phase"] in ("fenced", "switched"))
        ):
            state = None  # a finished or abandoned earlier copy: start over
        resumed = state is not None
        if state is None:
            state = {
                "domain": domain,
                "source": self.key,
                "phase": "bulk",
                "start_version": version,
                "watermark": version,
                "cursor": {},
            }
            self._save_now(state)
        copied = passes = 0
        if state["phase"] == "bulk":
            copied += self._bulk(domain, state)
            state["phase"] = "catchup"
            self._save_now(state)
        if state["phase"] == "catchup":
            while not fenced and passes < self.max_passes:
                passes += 1
                moved = self._catch_up(domain, state)
                copied += moved
                if moved < self.batch_size:
                    break
            # Already fenced (a crash right after the fence): the source is static at `version`.
            final = version if fenced else self._fence(domain)
            state["cursor"] = {**state["cursor"], "final": final}
            state["phase"] = "fenced"
            self._save_now(state)
        final_version = int(state["cursor"]["final"])
        checks: list[TableCheck] = []
        if state["phase"] == "fenced":
            copied += self._catch_up(domain, state)
            with transaction(self.target.engine, write=True) as session:
                upsert(
                    session,
                    tables.domains,
                    [
                        {
                            "domain": domain,
                            "version": final_version,
                            "state": "active",
                            "moved_to": None,
                            "updated_at": time.time(),
                        }
                    ],
                    ["domain"],
                )
            checks = self.verify(domain)
            if not all(c.matches for c in checks):
                self._unfence(domain)
                self._save_now({**state, "phase": "failed"})
                differ = [c.table for c in checks if not c.matches]
                raise Conflict(
                    f"copy of {domain!r} did not verify ({', '.join(differ)} differ); "
                    "the source is writable again",
                    field="domain",
                )
            if switch is not None:
                switch()
            state["phase"] = "switched"
            self._save_now(state)
        if delete_source:
            self._delete_source(domain)
        state["phase"] = "done"
        self._save_now(state)
        report = CopyReport(
            domain=domain,
            source=self.source.label,
            target=self.target.label,
            resumed=resumed,
            copied_rows=copied,
            catch_up_passes=passes,
            final_version=final_version,
            checks=checks,
            verified=True,
            switched=switch is not None,
            source_deleted=delete_source,
            seconds=time.monotonic() - started,
        )
        log.info("domain copied", domain=domain, rows=copied, passes=passes, resumed=resumed)
        return report

    def _copy_batches(
        self, domain: str, name: str, state: dict[str, Any], *, since: int | None
    ) -> int:
        """Copy rows of one table in key order from the saved cursor; with `since`, only rows
        written after that version. Each batch commits together with the cursor."""
        table, keys = tables.DATA_TABLES[name]
        cursor_key = name if since is None else f"{name}@{since}"
        key_cols = [table.c[k] for k in keys]
        copied = 0
        while True:
            after = state["cursor"].get(cursor_key)
            query = select(table).where(table.c.domain == domain)
            if since is not None:
                query = query.where(table.c.seq > since)
            if after is not None:
                query = query.where(tuple_(*key_cols) > tuple_(*after))
            query = query.order_by(*key_cols).limit(self.batch_size)
            with transaction(self.source.engine) as session:
                rows = [dict(r._mapping) for r in session.execute(query)]
            if not rows:
                return copied
            state["cursor"] = {**state["cursor"], cursor_key: [rows[-1][k] for k in keys]}
            with transaction(self.target.engine, write=True) as session:
                upsert(session, table, rows, ["domain", *keys])
                self._save(session, state)
            copied += len(rows)
            if self.progress:
                self.progress(domain, name, copied, "copy" if since is None else "catch-up")

    def _bulk(self, domain: str, state: dict[str, Any]) -> int:
        return sum(
            self._copy_batches(domain, name, state, since=None) for name in tables.DATA_TABLES
        )

    def _catch_up(self, domain: str, state: dict[str, Any]) -> int:
        """Copy what was written after the watermark, then raise the watermark to the version
        read before the copy (rows newer than it are simply copied again next pass)."""
        with transaction(self.source.engine) as session:
            version, _, _ = read_domain(session, domain)
        since = int(state["watermark"])
        copied = sum(self._copy_batches(domain, n, state, since=since) for n in tables.DATA_TABLES)
        state["watermark"] = max(since, version)
        state["cursor"] = {k: v for k, v in state["cursor"].items() if "@" not in k}
        self._save_now(state)
        return copied

    def _fence(self, domain: str) -> int:
        with transaction(self.source.engine, write=True) as session:
            version = lock_domain(session, domain)
            session.execute(
                update(tables.domains)
                .where(tables.domains.c.domain == domain)
                .values(state="moved", moved_to=self.target.label, updated_at=time.time())
            )
        return version

    def _unfence(self, domain: str) -> None:
        with transaction(self.source.engine, write=True) as session:
            session.execute(
                update(tables.domains)
                .where(tables.domains.c.domain == domain)
                .values(state="active", moved_to=None, updated_at=time.time())
            )

    def _delete_source(self, domain: str) -> None:
        with transaction(self.source.engine, write=True) as session:
            for table, _ in tables.DATA_TABLES.values():
                session.execute(delete(table).where(table.c.domain == domain))

    def verify(self, domain: str) -> list[TableCheck]:
        checks = []
        for name in tables.DATA_TABLES:
            src_rows, src_sum = table_check(self.source, domain, name)
            dst_rows, dst_sum = table_check(self.target, domain, name)
            checks.append(
                TableCheck(
                    table=name,
                    source_rows=src_rows,
                    target_rows=dst_rows,
                    source_checksum=src_sum,
                    target_checksum=dst_sum,
                )
            )
        return checks


def count_rows(store: ShardStore, domain: str) -> int:
    with transaction(store.engine) as session:
        return sum(
            int(
                session.execute(
                    select(func.count()).select_from(t).where(t.c.domain == domain)
                ).scalar_one()
            )
            for t, _ in tables.DATA_TABLES.values()
        )


def domains_to_copy(source: ShardStore, target: ShardStore) -> list[str]:
    """The source's live domains, plus those an interrupted copy to `target` already fenced."""
    d = tables.domains.c
    with transaction(source.engine) as session:
        rows = session.execute(select(d.domain, d.state, d.moved_to).order_by(d.domain))
        return [r[0] for r in rows if r[1] == "active" or r[2] == target.label]


# -- before a copy: the databases the caller named exist and answer ------------------------
CONNECT_TIMEOUT_S = 5


def _unreachable(url: str, field: str) -> InvalidInput | None:
    """None when the database answers; else the one-line error naming `field`. A throwaway
    engine with a connect timeout, so an unreachable host costs seconds, not a hang."""
    connect_args = {} if is_sqlite(url) else {"connect_timeout": CONNECT_TIMEOUT_S}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            return None
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        shown = make_url(url).render_as_string(hide_password=True)
        return InvalidInput(f"cannot connect to {shown}: {reason}", field=field)
    finally:
        engine.dispose()


def require_reachable(url: str, *, field: str, configured: bool = False) -> str:
    """The normalised URL of a database that answers. A SQLite file's folder must exist (a
    typo is refused rather than created) unless the URL is a configured place's."""
    url = _normalised(url, field)
    if is_sqlite(url):
        path = make_url(url).database or ""
        if configured and path not in ("", ":memory:"):
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        if path in ("", ":memory:") or not Path(path).expanduser().parent.is_dir():
            raise InvalidInput(f"no folder for the SQLite database {path!r}", field=field)
        return url
    error = _unreachable(url, field)
    if error is not None:
        raise error
    return url


def require_source(url: str, *, field: str) -> str:
    """The normalised URL of an existing database that holds context tables: nothing is
    created at a source (a missing one was once an empty file and "0 rows, all verified")."""
    url = _normalised(url, field)
    if is_sqlite(url):
        path = make_url(url).database or ""
        if path in ("", ":memory:") or not Path(path).expanduser().is_file():
            raise InvalidInput(f"no database file {path!r}", field=field)
    error = _unreachable(url, field)
    if error is not None:
        raise error
    engine = create_engine(url, poolclass=NullPool)
    try:
        if not inspect(engine).has_table(tables.domains.name):
            raise InvalidInput("the database holds no context tables", field=field)
    finally:
        engine.dispose()
    return url


def _normalised(url: str, field: str) -> str:
    try:
        return normalize_url(url)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field=field, allowed=exc.allowed) from None
