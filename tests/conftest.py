"""Shared fixtures: an isolated data directory per test, and real Postgres / Redis servers.

`make test` starts Postgres and Redis on loopback (scripts/services.sh) and exports
TRIFECTA_TEST_POSTGRES_URL and TRIFECTA_TEST_REDIS_URL. Outside `make test` the tests that
need them are skipped with the reason; under CI (CI=true) a missing server is a failure.

Those servers are shared by every checkout on the machine (one fixed port each), so a test
session keeps to what it owns: a Postgres database of its own (each test's database is made
beside it, and all of them are dropped when the session ends) and a redis-server of its own.
Two suites running at once, from different checkouts with different migrations, then never
see each other's tables, keys or pub/sub messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from trifecta.core import db
from trifecta.core.settings import get_settings

POSTGRES_URL = os.environ.get("TRIFECTA_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("TRIFECTA_TEST_REDIS_URL")
# Names everything this session makes on the shared servers (Postgres identifiers stay < 63).
SESSION = f"s{os.getpid()}_{uuid.uuid4().hex[:8]}"


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


def _admin_sql(url: str, *statements: str) -> None:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")  # CREATE/DROP DATABASE: no tx
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        admin.dispose()


def _fresh_postgres_database(admin_url: str, name: str | None = None) -> tuple[str, str]:
    name = name or f"t_{SESSION}_{uuid.uuid4().hex[:8]}"
    _admin_sql(admin_url, f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), name


def _drop_postgres_database(admin_url: str, name: str) -> None:
    db.dispose_engines()
    _admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _session_databases(shared_url: str) -> list[str]:
    """Every database this session made that is still there (a test killed mid-way leaves
    its own behind)."""
    admin = create_engine(shared_url)
    try:
        with admin.connect() as conn:
            found = conn.execute(
                text("SELECT datname FROM pg_database WHERE strpos(datname, :session) > 0"),
                {"session": SESSION},
            )
            return sorted(found.scalars())
    finally:
        admin.dispose()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _drop_dead_sessions_databases(shared_url: str) -> None:
    """Databases left by a test session that was killed (its pid is gone): without this they
    pile up on the shared test server, one per killed run."""
    admin = create_engine(shared_url)
    try:
        with admin.connect() as conn:
            names = conn.execute(
                text("SELECT datname FROM pg_database WHERE datname ~ '^(t|trifecta)_s[0-9]+_'")
            ).scalars()
            left = [name for name in names if not _pid_alive(int(name.split("_")[1][1:]))]
    finally:
        admin.dispose()
    for name in sorted(left, key=lambda name: name.startswith("trifecta_")):  # children first
        _drop_postgres_database(shared_url, name)


@pytest.fixture(scope="session")
def postgres_session_url(
    monkeypatch_session: pytest.MonkeyPatch,
) -> Iterator[str]:
    """This session's own database on the shared test server (made on first use), which
    TRIFECTA_TEST_POSTGRES_URL then names for the rest of the session, child processes
    included. Each test's database is created from it; at the end the session drops every
    database it made, through the server's shared database."""
    shared = _require(POSTGRES_URL, "TRIFECTA_TEST_POSTGRES_URL")
    _drop_dead_sessions_databases(shared)
    url, _name = _fresh_postgres_database(shared, f"trifecta_{SESSION}")
    monkeypatch_session.setenv("TRIFECTA_TEST_POSTGRES_URL", url)
    yield url
    db.dispose_engines()
    for name in _session_databases(shared):
        _drop_postgres_database(shared, name)


@pytest.fixture(scope="session")
def monkeypatch_session() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture
def postgres_url(postgres_session_url: str) -> Iterator[str]:
    """A new, empty Postgres database of this session, dropped afterwards."""
    url, name = _fresh_postgres_database(postgres_session_url)
    yield url
    _drop_postgres_database(postgres_session_url, name)


@pytest.fixture
def postgres_url_factory(postgres_session_url: str) -> Iterator[Callable[[], str]]:
    """Call it for as many fresh Postgres databases as a test needs (shards, migrations)."""
    made: list[str] = []

    def make() -> str:
        url, name = _fresh_postgres_database(postgres_session_url)
        made.append(name)
        return url

    yield make
    for name in made:
        _drop_postgres_database(postgres_session_url, name)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test once on SQLite and once on Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'parity.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def redis_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a redis-server of this session alone (a free loopback port, the binary
    `scripts/services.sh` installs), started when the suite runs with the test services.
    Not the shared server: pub/sub channels and CLIENT KILL span every database index, so
    two suites on one server heard each other's version pushes and dropped each other's
    subscriptions, whatever index each used."""
    _require(REDIS_URL, "TRIFECTA_TEST_REDIS_URL")
    from tests.reliability.servers import ThrowawayRedis

    server = ThrowawayRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url.rsplit("/", 1)[0]
    server.kill()


@pytest.fixture
def redis_url(redis_session_server: str) -> Iterator[str]:
    """A database on this session's Redis, flushed before and after the test."""
    import redis

    redis_url = f"{redis_session_server}/1"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield redis_url
    client.flushdb()
    client.close()
