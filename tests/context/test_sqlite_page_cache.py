"""Each SQLite shard connection's page cache is bounded by `sqlite_cache_kib` (issue 16): a
pool keeps up to 30 connections a shard database, each with its own cache for its life."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from trifecta.context.settings import ContextSettings
from trifecta.context.store import ShardStore


def cache_sizes(store: ShardStore, connections: int) -> list[int]:
    """PRAGMA cache_size of `connections` connections held at once (each a new one)."""
    held = [store.engine.connect() for _ in range(connections)]
    try:
        return [int(c.execute(text("PRAGMA cache_size")).scalar_one()) for c in held]
    finally:
        for connection in held:
            connection.close()


def test_every_connection_of_a_shard_gets_the_configured_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIFECTA_CONTEXT_SQLITE_CACHE_KIB", "256")
    store = ShardStore(f"sqlite:///{tmp_path / 'shard.db'}")
    assert cache_sizes(store, 3) == [-256] * 3  # negative: KiB
    # A second store of the same database adds no second listener and keeps the bound.
    again = ShardStore(f"sqlite:///{tmp_path / 'shard.db'}", page_cache_kib=64)
    assert cache_sizes(again, 4) == [-256] * 4


def test_the_default_is_smaller_than_sqlites_own(tmp_path: Path) -> None:
    assert ContextSettings().sqlite_cache_kib < 2000
    store = ShardStore(f"sqlite:///{tmp_path / 'other.db'}")
    assert cache_sizes(store, 1) == [-ContextSettings().sqlite_cache_kib]
