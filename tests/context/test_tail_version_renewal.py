"""Issue 17's first lead: the version board's entry of a steadily read domain is renewed by
the feed thread before it expires, so reads never wait on a version GET once it is on the
board, while a write on another replica still arrives within the bound and a version whose
Redis key is gone is not kept alive."""

from __future__ import annotations

import time

import pytest
import redis

from tests.context.replicas import BOUND_S, CAPSULE, QUERY, feed_live, lesson, redis_calls, wait_for
from trifecta.context.facade import ContextService

pytestmark = pytest.mark.integration


def read_steadily(service: ContextService, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        service.search_memories(CAPSULE, QUERY)
        time.sleep(0.02)


def test_a_steadily_read_domain_never_waits_on_a_version_get(
    replicas: tuple[ContextService, ContextService],
) -> None:
    a, b = replicas
    a.search_memories(CAPSULE, QUERY)
    wait_for(lambda: feed_live(a))
    a.search_memories(CAPSULE, QUERY)  # the version is on the board now
    assert a.versions.feed is not None
    ttl = a.versions.feed.entry_ttl_s
    before = redis_calls(a)
    read_steadily(a, 2.5 * ttl)  # the entry would have expired twice without renewal
    assert redis_calls(a) == before
    assert a.cache_stats()["feed_renewals"] >= 2
    # A write elsewhere still reaches the board within the bound.
    written = b.add_memories(CAPSULE, [lesson(2)]).version
    started = time.monotonic()
    wait_for(lambda: a.search_memories(CAPSULE, QUERY).version == written, timeout=BOUND_S)
    assert time.monotonic() - started < BOUND_S


def test_a_version_whose_redis_key_is_gone_is_not_renewed(
    replicas: tuple[ContextService, ContextService], redis_url: str
) -> None:
    a, _ = replicas
    a.search_memories(CAPSULE, QUERY)
    wait_for(lambda: feed_live(a))
    a.search_memories(CAPSULE, QUERY)
    assert a.versions.feed is not None
    ttl = a.versions.feed.entry_ttl_s
    admin = redis.Redis.from_url(redis_url)
    keys = admin.keys(a.versions.key("*"))
    assert keys, "the domain's version key is in Redis"
    admin.delete(*keys)  # as if it expired: its writer died before the next publish
    admin.close()
    before = redis_calls(a)
    read_steadily(a, ttl + 0.3)
    assert redis_calls(a) > before, "the board kept serving a version without its key"
