"""Shared fixtures: an isolated data directory per test, and real Postgres / Redis servers.

`make test` starts Postgres and Redis on loopback (scripts/services.sh) and exports
TRIFECTA_TEST_POSTGRES_URL and TRIFECTA_TEST_REDIS_URL. Outside `make test` the tests that
need them are skipped with the reason; under CI (CI=true) a missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from trifecta.core import db
from trifecta.core.settings import get_settings

POSTGRES_URL = os.environ.get("TRIFECTA_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("TRIFECTA_TEST_REDIS_URL")


def _require(value: str | None, what: str) -> str:
    if value:
        return value
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not set: CI must run the suite through `make test`")
    pytest.skip(f"{what} not set (run through `make test`)")


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own data directory and no stray trifecta.toml or TRIFECTA_* env."""
    for key in list(os.environ):
        if key.startswith("TRIFECTA_") and not key.startswith("TRIFECTA_TEST_"):
            monkeypatch.delenv(key)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("TRIFECTA_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TRIFECTA_CONFIG", str(tmp_path / "trifecta.toml"))
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()
    db.dispose_engines()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


def _fresh_postgres_database(base_url: str) -> tuple[str, str]:
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False), name


def _drop_postgres_database(base_url: str, name: str) -> None:
    db.dispose_engines()
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty Postgres database on the test server, dropped afterwards."""
    base = _require(POSTGRES_URL, "TRIFECTA_TEST_POSTGRES_URL")
    url, name = _fresh_postgres_database(base)
    yield url
    _drop_postgres_database(base, name)


@pytest.fixture
def postgres_url_factory() -> Iterator[object]:
    """Call it for as many fresh Postgres databases as a test needs (shards, migrations)."""
    base = _require(POSTGRES_URL, "TRIFECTA_TEST_POSTGRES_URL")
    made: list[str] = []

    def make() -> str:
        url, name = _fresh_postgres_database(base)
        made.append(name)
        return url

    yield make
    for name in made:
        _drop_postgres_database(base, name)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test once on SQLite and once on Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'parity.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database index of its own, flushed before and after the test."""
    import redis

    base = _require(REDIS_URL, "TRIFECTA_TEST_REDIS_URL")
    index = 1 + (uuid.uuid4().int % 15)
    redis_url = f"{base.rsplit('/', 1)[0]}/{index}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    client.flushdb()
    client.close()
