"""The shard map's entry read (one statement on a driver connection) and the router's one
read a domain when its remembered entry expires, on SQLite and Postgres."""

from __future__ import annotations

import threading
import time

import pytest

from trifecta.context.shards import ShardMap, ShardPlace, ShardRouter


def test_an_entry_reads_back_as_assigned_with_its_place(db_url: str) -> None:
    shard_map = ShardMap(db_url)
    assert shard_map.get("plant-a") is None
    place = ShardPlace(name="edge-eu", kind="edge", jurisdiction="eu")
    shard_map.assign("plant-a", "sqlite:////tmp/shard-a.db", place)
    shard_map.assign("plant-b", "sqlite:////tmp/shard-b.db")
    assert shard_map.get("plant-a") == ("sqlite:////tmp/shard-a.db", place)
    assert shard_map.get("plant-b") == ("sqlite:////tmp/shard-b.db", None)
    moved = ShardPlace(name="inference", kind="cloud", jurisdiction="eu")
    shard_map.assign("plant-a", "sqlite:////tmp/shard-c.db", moved)  # another writer's move
    assert shard_map.get("plant-a") == ("sqlite:////tmp/shard-c.db", moved)


def test_requests_at_an_expired_entry_read_the_map_once(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard_map = ShardMap(sqlite_url)
    shard_map.assign("plant-a", "sqlite:////tmp/shard-a.db")
    router = ShardRouter(shard_map, sqlite_url, ttl_s=60.0)
    reads: list[str] = []
    read = shard_map.get

    def slow_read(domain: str) -> tuple[str, ShardPlace | None] | None:
        reads.append(domain)
        time.sleep(0.05)  # long enough for every thread to arrive while it runs
        return read(domain)

    monkeypatch.setattr(shard_map, "get", slow_read)
    start = threading.Barrier(8)
    urls: list[str] = []

    def one() -> None:
        start.wait()
        urls.append(router.url_for("plant-a"))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert urls == ["sqlite:////tmp/shard-a.db"] * 8
    assert reads == ["plant-a"]
    assert router.url_for("other") == router.default_url  # an unmapped domain: the default
    router.invalidate("plant-a")
    router.url_for("plant-a")
    assert reads == ["plant-a", "other", "plant-a"]


def test_an_entry_older_than_the_ttl_is_read_again(sqlite_url: str) -> None:
    shard_map = ShardMap(sqlite_url)
    shard_map.assign("plant-a", "sqlite:////tmp/shard-a.db")
    router = ShardRouter(shard_map, sqlite_url, ttl_s=0.2)
    assert router.url_for("plant-a") == "sqlite:////tmp/shard-a.db"
    shard_map.assign("plant-a", "sqlite:////tmp/shard-b.db")  # a move by another process
    assert router.url_for("plant-a") == "sqlite:////tmp/shard-a.db"  # remembered
    time.sleep(0.25)
    assert router.url_for("plant-a") == "sqlite:////tmp/shard-b.db"
