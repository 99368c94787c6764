"""Postgres pools ping a connection only after it sat idle (`core.db.PING_IDLE_S`): a
connection reused at once is not pinged, and a connection the server dropped while it sat
in the pool (a restart, an administrator's kill) is replaced before use, with every
connection opened before it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, bindparam, column, create_engine, select, table, text
from sqlalchemy.pool import NullPool

from trifecta.core.db import PING_IDLE_S, RowRead, create_db_engine


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    made = create_db_engine(postgres_url, pool_size=4)
    yield made
    made.dispose()


def _pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("select pg_backend_pid()")).scalar_one())


def _kill(url: str, pids: list[int]) -> None:
    admin = create_engine(url, poolclass=NullPool)
    with admin.connect() as connection:
        for pid in pids:
            assert connection.execute(text(f"select pg_terminate_backend({pid})")).scalar_one()
    admin.dispose()


def _count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_conn: object) -> bool:
        pings.append(1)
        return ping(dbapi_conn)  # type: ignore[arg-type]

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def test_a_connection_reused_at_once_is_not_pinged_and_an_idle_one_is(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(engine, monkeypatch)
    first = _pid(engine)  # a new connection: nothing to ping
    assert [_pid(engine) for _ in range(50)] == [first] * 50
    assert pings == []
    time.sleep(PING_IDLE_S * 1.5)
    assert _pid(engine) == first  # alive: pinged, kept
    assert pings == [1]


def test_connections_dropped_in_the_pool_are_replaced_before_use(
    engine: Engine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with engine.connect() as a, engine.connect() as b:  # two pooled connections
        pids = [int(c.execute(text("select pg_backend_pid()")).scalar_one()) for c in (a, b)]
    _kill(postgres_url, pids)
    time.sleep(PING_IDLE_S * 1.5)
    pings = _count_pings(engine, monkeypatch)
    with engine.connect() as a, engine.connect() as b:  # neither statement fails
        now = [int(c.execute(text("select pg_backend_pid()")).scalar_one()) for c in (a, b)]
    assert not set(now) & set(pids)
    assert len(pings) == 1  # the first dead one invalidated the pool: the second not pinged
    # the request path's single-row reads take raw pooled connections: the same holds
    with engine.begin() as connection:
        connection.execute(text("create table kv (k text primary key, v integer)"))
        connection.execute(text("insert into kv values ('a', 1)"))
    kv = table("kv", column("k"), column("v"))
    read = RowRead(engine, select(kv.c.v).where(kv.c.k == bindparam("key")))
    assert read.read(key="a") == (1,)
    _kill(postgres_url, [_pid(engine)])
    time.sleep(PING_IDLE_S * 1.5)
    assert read.read(key="a") == (1,)
