"""What the version-feed tests share: the capsule and query they read, the lessons they write,
and the probes of a replica's feed and Redis traffic. The `replicas` fixture is in conftest."""

from __future__ import annotations

import time
from collections.abc import Callable

from trifecta.context.facade import ContextService
from trifecta.context.models import MemoryDraft, MemoryQuery, MemorySource

CAPSULE = "twin-a"
QUERY = MemoryQuery(query="how do minus signs bind", k=3)
BOUND_S = 0.5  # RELIABILITY.md's bound for a write on one replica to be read on another


def lesson(n: int) -> MemoryDraft:
    return MemoryDraft(
        title=f"Lesson {n}",
        content=f"Lesson number {n}: carry operand {n * 37} before subtracting {n * 11}.",
        outcome="success",
        source=MemorySource(task_id=f"test-{n}"),
    )


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def redis_calls(service: ContextService) -> int:
    """The service's Redis calls so far, once its sharer thread has sent the results it
    holds (a count taken while a SET is in flight would move under the caller)."""
    assert service.redis is not None
    assert service.results.flush()
    return service.redis.calls


def feed_live(service: ContextService) -> bool:
    feed = service.versions.feed
    return feed is not None and feed.healthy
