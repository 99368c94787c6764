"""Every SQLite connection's page cache is bounded by `sqlite_cache_kib` (issue 16): a
connection keeps its cache for its life and an engine's pool keeps up to 30 connections, so
the caches, not the data, grew with the connections a server opened."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from trifecta.context.store import ShardStore
from trifecta.core.db import create_db_engine
from trifecta.core.settings import Settings, get_settings


@pytest.fixture
def small_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TRIFECTA_SQLITE_CACHE_KIB", "256")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def cache_sizes(engine: object, connections: int) -> list[int]:
    """PRAGMA cache_size of `connections` connections held at once (each a new one)."""
    held = [engine.connect() for _ in range(connections)]  # type: ignore[attr-defined]
    try:
        return [int(c.execute(text("PRAGMA cache_size")).scalar_one()) for c in held]
    finally:
        for connection in held:
            connection.close()


@pytest.mark.usefixtures("small_cache")
def test_every_connection_gets_the_configured_cache(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'control.db'}")
    try:
        assert cache_sizes(engine, 3) == [-256] * 3  # negative: KiB
    finally:
        engine.dispose()
    shard = ShardStore(f"sqlite:///{tmp_path / 'shard.db'}")  # a context shard's engine too
    assert cache_sizes(shard.engine, 2) == [-256] * 2


def test_the_default_is_a_quarter_of_sqlites_own() -> None:
    assert Settings().sqlite_cache_kib == 512  # SQLite's compiled-in default: 2,000 KiB
