"""The result cache shares computed results with Redis from a thread of its own: `put`
returns before Redis answers, what queued meanwhile goes in one pipeline, a bounded backlog
drops the oldest, and Redis failing leaves the in-process copies serving."""

from __future__ import annotations

import threading
from typing import Any

from trifecta.context.cache import RedisLink, ResultCache
from trifecta.context.models import MemorySearchResult


class SlowPipeline:
    def __init__(self, client: SlowRedis):
        self.client = client
        self.sets: list[tuple[str, bytes, int]] = []

    def set(self, key: str, body: bytes, px: int) -> None:
        self.sets.append((key, body, px))

    def execute(self) -> None:
        self.client.entered.set()
        assert self.client.release.wait(10)
        if self.client.fail:
            raise ConnectionError("redis went away")
        self.client.batches.append(self.sets)


class SlowRedis:
    """A Redis whose pipelines block until released (a loaded Redis, or a starved reader)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[tuple[str, bytes, int]]] = []
        self.fail = fail

    def pipeline(self, transaction: bool = True) -> SlowPipeline:
        assert transaction is False
        return SlowPipeline(self)

    def ping(self) -> bool:
        return True


def result(version: int) -> MemorySearchResult:
    return MemorySearchResult(domain="plant", version=version, hits=[])


def cache_over(client: Any, **kwargs: Any) -> ResultCache:
    return ResultCache(RedisLink(client, retry_s=60), max_entries=16, ttl_s=5, **kwargs)


def test_put_returns_before_redis_answers_and_the_backlog_goes_in_one_pipeline() -> None:
    client = SlowRedis()
    cache = cache_over(client)
    body = cache.put("plant", 1, "k1", result(1)).json()  # the sharer takes it, blocks in Redis
    assert client.entered.wait(5)
    assert cache.get_body("plant", 1, "k1", shared=False) == body  # served here meanwhile
    cache.put("plant", 1, "k2", result(1))
    cache.put("plant", 2, "k1", result(2))
    assert not cache.flush(timeout=0.05)  # Redis has not answered yet
    client.release.set()
    assert cache.flush(timeout=5)
    keys = [[key for key, _, _ in batch] for batch in client.batches]
    assert keys == [
        ["trifecta:ctx:r:plant:1:k1"],
        ["trifecta:ctx:r:plant:1:k2", "trifecta:ctx:r:plant:2:k1"],  # one pipeline
    ]
    assert all(px == 5000 for batch in client.batches for _, _, px in batch)
    assert cache.stats()["shared"] == 3 and cache.stats()["unshared"] == 0


def test_a_full_backlog_drops_the_oldest_and_a_failed_pipeline_is_counted() -> None:
    client = SlowRedis(fail=True)
    cache = ResultCache(RedisLink(client, retry_s=60), max_entries=16, ttl_s=5)
    cache._sharer.backlog = 2
    cache.put("plant", 1, "first", result(1))
    assert client.entered.wait(5)  # in flight
    for i in range(5):
        cache.put("plant", 1, f"k{i}", result(1))
    assert cache.stats()["unshared"] == 3  # k0, k1, k2 dropped; k3, k4 wait
    client.release.set()
    assert cache.flush(timeout=5)
    # Redis failed: nothing shared, the breaker open, every result still served here
    assert cache.stats()["shared"] == 0
    assert cache.stats()["unshared"] == 3 + 1 + 2
    assert cache.link is not None and cache.link.is_open
    assert cache.get_body("plant", 1, "k4", shared=False) is not None


def test_without_redis_nothing_is_queued() -> None:
    cache = ResultCache(None, max_entries=16, ttl_s=5)
    cache.put("plant", 1, "k", result(1))
    assert cache.flush(timeout=0.01)
    assert cache.stats()["shared"] == 0 and cache.stats()["unshared"] == 0


def test_without_redis_a_result_is_encoded_only_when_its_json_is_asked_for() -> None:
    """An in-process caller gets the model it computed; the JSON (an HTTP answer) is made
    once, at the first ask, and parses back to the same result."""
    cache = ResultCache(None, max_entries=16, ttl_s=5)
    kept = cache.put("plant", 1, "k", result(1))
    assert kept.body is None  # nothing encoded yet
    assert cache.get("plant", 1, "k", type(result(1))) is kept.value
    body = cache.get_body("plant", 1, "k", shared=False)
    assert body is not None and kept.body is body
    assert type(result(1)).model_validate_json(body) == result(1)
