"""The Redis breaker of the context cache against a real redis-server of the test's own,
paused with SIGSTOP: bounded calls, skipped calls while open, and on recovery the versions
that could not be published are published before anyone reads Redis again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.servers import ThrowawayRedis
from trifecta.context.cache import VersionBoard, connect_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


def wait_closed(board: VersionBoard, timeout: float = 10.0) -> None:
    assert board.link is not None
    deadline = time.monotonic() + timeout
    while board.link.is_open:
        assert time.monotonic() < deadline, "the breaker did not close"
        time.sleep(0.05)


def test_a_paused_redis_costs_one_bounded_call_then_none(own_redis: ThrowawayRedis) -> None:
    link = connect_redis(own_redis.url, timeout_s=0.25, retry_s=0.2)
    board = VersionBoard(link, ttl_s=60)
    board.publish("plant", 3)
    assert board.get("plant") == 3
    own_redis.pause()
    try:
        started = time.monotonic()
        assert board.get("plant") is None  # timed out: the caller reads the shard
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(100):
            assert board.get("plant") is None
        hundred = time.monotonic() - started
        board.publish("plant", 4)  # a write committed while Redis is away
        board.publish("plant", 5)
        assert board.unpublished() == 1
    finally:
        own_redis.resume()
    assert first < 0.6  # one socket timeout (0.25 s), no retries inside the client
    assert hundred < 0.05  # the breaker is open: no call waits
    wait_closed(board)
    assert link.stats()["redis_recoveries"] == 1 and board.unpublished() == 0
    # Published on recovery, before the breaker closed; the highest version wins.
    assert int(link.client.get(board.key("plant"))) == 5
    # Until this process re-reads plant's version from its shard, Redis is not trusted for it.
    assert board.get("plant") is None
    board.publish("plant", 5)  # what the facade does with the shard's version
    assert board.get("plant") == 5


def test_a_killed_redis_is_skipped_and_used_again_when_back(own_redis: ThrowawayRedis) -> None:
    link = connect_redis(own_redis.url, timeout_s=0.25, retry_s=0.2)
    board = VersionBoard(link, ttl_s=60)
    board.publish("grid", 1)
    own_redis.kill()
    started = time.monotonic()
    for version in range(2, 12):
        board.publish("grid", version)
        assert board.get("grid") is None
    assert time.monotonic() - started < 0.5  # refused at once, then skipped
    own_redis.start()  # back on the same port, empty
    wait_closed(board)
    assert int(link.client.get(board.key("grid"))) == 11
