"""The database engine factory and schema migrations.

One factory for both back ends: `sqlite:///path` (WAL, busy timeout, foreign keys) for the
embedded default and `postgresql+psycopg://...` for scale. Each package that owns tables
keeps its Alembic revisions in `<package>/migrations/` and its own version table
(`alembic_version_<package>`), so packages migrate independently and a context shard holds
only the context schema. `ensure_schema` runs pending revisions on first use.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker

from trifecta.core.errors import InvalidInput
from trifecta.core.settings import get_settings

SUPPORTED_DRIVERS = ("sqlite", "postgresql+psycopg")

_engines: dict[str, Engine] = {}
_migrated: set[tuple[str, str]] = set()
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` as psycopg 3 URLs; refuse other drivers."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise InvalidInput(f"not a database URL: {url!r}", field="database_url") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in SUPPORTED_DRIVERS:
        raise InvalidInput(
            f"unsupported driver {parsed.drivername!r}",
            field="database_url",
            allowed=SUPPORTED_DRIVERS,
        )
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url_or_engine: str | Engine) -> bool:
    url = url_or_engine.url if isinstance(url_or_engine, Engine) else make_url(url_or_engine)
    return url.get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, *, cache_kib: int, soft_heap_mib: int) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # A connection keeps its page cache for its life and a pool keeps up to 30 of them an
    # engine: bounded by `sqlite_cache_kib` (negative: KiB, not pages).
    cursor.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    # The bound above is per connection, and a process opens a pool per database (the
    # control database, each environment's shards): the soft heap limit bounds them all
    # together. It is process-wide (every connection sets the same value); past it SQLite's
    # page caches recycle their pages instead of allocating more.
    cursor.execute(f"PRAGMA soft_heap_limit={int(soft_heap_mib) * 2**20}")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Writers ask for BEGIN IMMEDIATE (`transaction(engine, write=True)`): they take the write
    # lock up front, so read-then-write transactions queue on the busy timeout instead of
    # failing with "database is locked" on upgrade. Readers keep SQLite's deferred BEGIN.
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def create_db_engine(url: str, *, pool_size: int = 10) -> Engine:
    """A new engine for `url`. Prefer `get_engine`, which shares one per URL per process."""
    url = normalize_url(url)
    if is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # A pool keeps connections open: with none, closing the last connection checkpoints
        # the WAL on every transaction (about 20 ms a write).
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=2 * pool_size,
            connect_args={"check_same_thread": False, "isolation_level": None},
        )
        settings = get_settings()  # read once an engine
        pragmas = functools.partial(
            _sqlite_pragmas,
            cache_kib=settings.sqlite_cache_kib,
            soft_heap_mib=settings.sqlite_soft_heap_mib,
        )
        event.listen(engine, "connect", pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=2 * pool_size)
    _ping_when_idle(engine)
    return engine


# A pooled connection idle this long is pinged before use. SQLAlchemy's `pool_pre_ping` pings
# at every checkout: a round trip on each of the request path's statements, most of which run
# on a connection returned milliseconds before. Stopping and starting a server takes longer
# than this, so a connection a restart killed has been idle past it when next taken: pinged,
# found dead and replaced, with every connection opened before it.
PING_IDLE_S = 0.2


def _ping_when_idle(engine: Engine) -> None:
    dialect = engine.dialect

    def checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        # `info` is cleared when a connection is closed or invalidated: a new one is not pinged
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as exc:
            if not dialect.is_disconnect(exc, dbapi_conn, None):
                raise
            # as pre-ping would: this connection is replaced (the pool retries the checkout),
            # and so is every connection opened before it, which the same restart killed
            raise InvalidatePoolError(str(exc)) from exc

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)


def get_engine(url: str) -> Engine:
    """The process-wide engine for `url` (created on first use)."""
    key = normalize_url(url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = create_db_engine(key)
        return engine


def dispose_engines() -> None:
    """Close every shared engine (tests, shutdown, after fork)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _migrated.clear()


def migrations_dir(package: str) -> Path:
    """`<package>/migrations`, the folder of that package's Alembic revisions."""
    return Path(str(importlib.resources.files(package) / "migrations"))


def ensure_schema(engine: Engine, package: str) -> None:
    """Upgrade `package`'s tables in `engine`'s database to the newest revision (once per
    process and database)."""
    key = (engine.url.render_as_string(hide_password=False), package)
    if key in _migrated:
        return
    with _lock:
        if key in _migrated:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option(
            "script_location", str(importlib.resources.files("trifecta.core") / "alembic")
        )
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", str(migrations_dir(package)))
        config.attributes["version_table"] = "alembic_version_" + package.rsplit(".", 1)[-1]
        with _writer(engine).begin() as connection:
            if connection.dialect.name == "postgresql":
                # Processes starting together must not create the same tables twice.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_lock_id(package)})")
            config.attributes["connection"] = connection
            command.upgrade(config, "heads")
        _migrated.add(key)


def _lock_id(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=7).digest(), "big")


def _writer(engine: Engine) -> Engine:
    return engine.execution_options(sqlite_begin="IMMEDIATE") if is_sqlite(engine) else engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine, *, write: bool = False) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception. Pass
    `write=True` for transactions that read then write (SQLite takes its lock up front)."""
    bind = _writer(engine) if write else engine
    with Session(bind, expire_on_commit=False) as session, session.begin():
        yield session


class RowRead:
    """One statement that reads at most one row, run on a pooled driver connection without
    a session or a transaction around it (a single statement reads a consistent snapshot by
    itself). On SQLite a primary-key read costs 20 us this way against 125 through a
    SQLAlchemy connection, whose BEGIN and ROLLBACK are the difference, and 290 through an
    ORM session (measured here): for the reads the request path makes every request."""

    def __init__(self, engine: Engine, statement: Select[Any]):
        self.engine = engine
        self._compiled = statement.compile(dialect=engine.dialect)
        self._positional = engine.dialect.positional

    def read(self, **values: object) -> tuple[object, ...] | None:
        params = self._compiled.construct_params(values)
        args: Sequence[object] | Mapping[str, object] = (
            tuple(params[name] for name in self._compiled.positiontup or ())
            if self._positional
            else params
        )
        dialect = self.engine.dialect
        try:
            connection = self.engine.raw_connection()
        except dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, args, invalidated=False) from exc
        try:
            cursor = connection.cursor()
            cursor.execute(self._compiled.string, args)
            row = cursor.fetchone()
            cursor.close()
            connection.commit()  # ends the driver's implicit transaction, if it opened one
        except dialect.loaded_dbapi.Error as exc:
            # as a session would: a lost connection leaves the pool, and the caller gets
            # SQLAlchemy's exception (the HTTP layer answers 503 for an unreachable database)
            lost = dialect.is_disconnect(exc, connection, None)
            if lost:
                connection.invalidate(exc)
            raise self._wrapped(exc, args, invalidated=lost) from exc
        finally:
            connection.close()
        return None if row is None else tuple(row)

    def _wrapped(
        self,
        exc: Exception,
        args: Sequence[object] | Mapping[str, object],
        *,
        invalidated: bool,
    ) -> BaseException:
        return DBAPIError.instance(
            self._compiled.string,
            args,
            exc,
            self.engine.dialect.loaded_dbapi.Error,
            connection_invalidated=invalidated,
            dialect=self.engine.dialect,
        )
