"""The version feed: with its subscription live a cache hit makes no Redis call, another
replica's write reaches the board by push, and a lost subscription falls back to the GET
without serving a version it missed."""

from __future__ import annotations

import time

import pytest
import redis

from tests.context.replicas import BOUND_S, CAPSULE, QUERY, feed_live, lesson, redis_calls, wait_for
from trifecta.context.facade import ContextService

pytestmark = pytest.mark.integration


def test_a_cache_hit_makes_no_redis_call_while_the_feed_is_live(
    replicas: tuple[ContextService, ContextService],
) -> None:
    a, _ = replicas
    first = a.search_memories(CAPSULE, QUERY)  # computes; starts the feed
    wait_for(lambda: feed_live(a))
    assert a.search_memories(CAPSULE, QUERY) == first  # learns the version onto the board
    before = redis_calls(a)
    hits_before = a.results.hits
    for _ in range(50):
        assert a.search_memories(CAPSULE, QUERY) == first
    assert redis_calls(a) == before  # neither a version GET nor a result GET
    assert a.results.hits - hits_before == 50
    assert a.cache_stats()["feed_board_hits"] >= 50


def test_a_write_on_one_replica_reaches_the_others_board_by_push(
    replicas: tuple[ContextService, ContextService],
) -> None:
    a, b = replicas
    a.search_memories(CAPSULE, QUERY)
    wait_for(lambda: feed_live(a))
    old = a.search_memories(CAPSULE, QUERY).version
    written = b.add_memories(CAPSULE, [lesson(2)]).version
    assert written > old
    started = time.monotonic()
    wait_for(lambda: a.search_memories(CAPSULE, QUERY).version == written, timeout=BOUND_S)
    assert time.monotonic() - started < BOUND_S
    assert a.cache_stats()["feed_messages"] >= 1


def test_a_lost_subscription_falls_back_to_redis_and_misses_no_write(
    replicas: tuple[ContextService, ContextService], redis_url: str
) -> None:
    a, b = replicas
    a.search_memories(CAPSULE, QUERY)
    wait_for(lambda: feed_live(a))
    a.search_memories(CAPSULE, QUERY)
    lapses = a.cache_stats()["feed_lapses"]
    # Drop every subscription (A's and B's): B's write is then published to no one.
    admin = redis.Redis.from_url(redis_url)
    admin.client_kill_filter(_type="pubsub")
    admin.close()
    written = b.add_memories(CAPSULE, [lesson(3)]).version
    # A's next read asks Redis (its board is no longer trusted) and sees the write.
    assert a.search_memories(CAPSULE, QUERY).version == written
    wait_for(lambda: a.cache_stats()["feed_lapses"] > lapses)
    wait_for(lambda: feed_live(a))  # resubscribed, with an empty board under a new epoch
    before = redis_calls(a)
    assert a.search_memories(CAPSULE, QUERY).version == written
    # At most the one GET that puts the version back on the board: none when a message
    # arriving after the resubscription put it there first (timing decides which).
    after = redis_calls(a)
    assert after <= before + 1
    assert a.search_memories(CAPSULE, QUERY).version == written
    assert redis_calls(a) == after  # from the board now


def test_a_miss_looked_up_in_redis_on_the_loop_is_not_looked_up_there_again(
    replicas: tuple[ContextService, ContextService],
) -> None:
    """The HTTP path looks a read up on the event loop first (`cached_json`); on a miss the
    thread pool computes it, looking in Redis again only if the version moved meanwhile:
    one GET and one SET per computed read, not two GETs."""
    a, b = replicas
    a.search_memories(CAPSULE, QUERY)
    wait_for(lambda: feed_live(a))
    written = a.add_memories(CAPSULE, [lesson(4)]).version  # the next read is computed
    wait_for(lambda: a.versions.get("plant") == written)
    read = a.plan_search(CAPSULE, QUERY)
    body, version = a.cached_json(read)
    assert body is None and version == a.current_version(read.domain)
    before = redis_calls(a)
    computed = a.run_json(read, asked=True, looked_at=version)
    assert redis_calls(a) - before == 1  # the SET that shares it with other replicas
    # the other replica finds it in Redis and answers the same bytes
    assert b.run_json(b.plan_search(CAPSULE, QUERY)) == computed
    assert b.results.shared_hits == 1
