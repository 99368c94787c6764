"""All of a process's SQLite memory is bounded by `sqlite_soft_heap_mib` (issue 16): each
connection's page cache is bounded by `sqlite_cache_kib`, but a process keeps a pool of
connections per database, so only a process-wide limit bounds their sum."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from trifecta.core.db import create_db_engine
from trifecta.core.heap_report import sqlite_mb
from trifecta.core.settings import Settings, get_settings

ROWS = 20_000  # 20,000 rows of 1 KiB: a 20 MB table, larger than any cache below
CONNECTIONS = 3


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "big.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        connection.executemany("INSERT INTO t (payload) VALUES (randomblob(1024))", [()] * ROWS)
    probe = sqlite3.connect(":memory:")
    before = probe.execute("PRAGMA soft_heap_limit").fetchone()[0]
    yield path
    probe.execute(f"PRAGMA soft_heap_limit={before}")  # process-wide: as it was
    probe.close()
    get_settings.cache_clear()


def sqlite_memory_after_scans(path: Path, monkeypatch: pytest.MonkeyPatch, limit_mib: int) -> float:
    """SQLite's own memory (MB) while `CONNECTIONS` connections of one engine, each with a
    16 MiB page cache, are held open after each read the whole table."""
    monkeypatch.setenv("TRIFECTA_SQLITE_CACHE_KIB", "16384")
    monkeypatch.setenv("TRIFECTA_SQLITE_SOFT_HEAP_MIB", str(limit_mib))
    get_settings.cache_clear()
    engine = create_db_engine(f"sqlite:///{path}")
    held = [engine.connect() for _ in range(CONNECTIONS)]
    try:
        for connection in held:
            total = connection.execute(text("SELECT sum(length(payload)) FROM t")).scalar_one()
            assert total == ROWS * 1024
        used = sqlite_mb()
        assert used is not None
        return used
    finally:
        for connection in held:
            connection.close()
        engine.dispose()


def test_the_soft_heap_limit_bounds_every_connections_cache_together(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unbounded = sqlite_memory_after_scans(database, monkeypatch, limit_mib=0)
    bounded = sqlite_memory_after_scans(database, monkeypatch, limit_mib=4)
    # Without the limit each connection caches up to its 16 MiB of the 20 MB table.
    assert unbounded > 2 * 16
    # With it the sum stays at the limit (a soft one: a page or a statement may pass it).
    assert bounded < 4 + 1


def test_the_default_limit_and_a_negative_one_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().sqlite_soft_heap_mib == 64
    monkeypatch.setenv("TRIFECTA_SQLITE_SOFT_HEAP_MIB", "-1")
    with pytest.raises(ValueError, match="sqlite_soft_heap_mib"):
        Settings()
