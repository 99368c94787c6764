"""What a test session owns on the shared Postgres and Redis servers (tests/conftest.py): its
databases are named after it and made inside it, and its Redis index is claimed by it, so a
second checkout's suite on the same servers touches neither."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import SESSION
from trifecta.core.db import get_engine
from trifecta.fleet.registry import CapsuleRegistry


@pytest.mark.postgres
def test_a_tests_database_is_this_sessions_and_the_url_names_the_session_database(
    postgres_url: str, postgres_session_url: str
) -> None:
    assert SESSION in make_url(postgres_url).database  # type: ignore[operator]
    assert make_url(postgres_session_url).database == f"trifecta_{SESSION}"
    # child processes and anything reading the variable get this session's database
    assert os.environ["TRIFECTA_TEST_POSTGRES_URL"] == postgres_session_url
    assert CapsuleRegistry(get_engine(postgres_url)).count() == 0  # migrated from empty
    engine = create_engine(postgres_session_url)
    with engine.connect() as conn:
        mine = conn.execute(
            text("SELECT datname FROM pg_database WHERE strpos(datname, :s) > 0"), {"s": SESSION}
        ).scalars()
        assert make_url(postgres_url).database in set(mine)
    engine.dispose()


@pytest.mark.redis
def test_redis_is_a_server_of_this_session_not_the_shared_one(redis_url: str) -> None:
    import redis

    shared = redis.Redis.from_url(os.environ["TRIFECTA_TEST_REDIS_URL"])
    ours = redis.Redis.from_url(redis_url)
    assert (
        ours.connection_pool.connection_kwargs["port"]
        != shared.connection_pool.connection_kwargs["port"]
    )
    assert ours.dbsize() == 0  # flushed before the test
    # pub/sub spans database indexes: only a server of its own keeps another suite's pushes out
    listener = ours.pubsub(ignore_subscribe_messages=True)
    listener.subscribe("trifecta:ctx:versions")
    shared.publish("trifecta:ctx:versions", "plant 99")  # as another checkout's suite would
    assert listener.get_message(timeout=0.2) is None
    assert ours.publish("trifecta:ctx:versions", "plant 1") == 1
    assert listener.get_message(timeout=2.0)["data"] == b"plant 1"  # type: ignore[index]
    listener.close()
    ours.close()
    shared.close()
