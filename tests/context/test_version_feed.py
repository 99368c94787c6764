"""The version feed: with its subscription live a cache hit makes no Redis call, another
replica's write reaches the board by push, and a lost subscription falls back to the GET
without serving a version it missed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

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


def test_the_event_loop_never_waits_for_redis_nor_a_read_computed_for_less(
    replicas: tuple[ContextService, ContextService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP path looks a read up on the event loop in this process only (`cached_json`:
    no Redis call). On a miss the thread pool looks in Redis only if computing the read
    here would embed its query or read the shard; the result reaches Redis from the sharer
    thread, not on the request's clock."""
    a, b = replicas
    a.search_memories(CAPSULE, QUERY)  # A remembers the query's embedding
    wait_for(lambda: feed_live(a))
    written = a.add_memories(CAPSULE, [lesson(4)]).version  # the next read is computed
    wait_for(lambda: a.versions.get("plant") == written)
    assert a.results.flush()
    calls: dict[ContextService, list[str]] = {a: [], b: []}  # on this (the request's) thread
    for replica in (a, b):
        link = replica.redis
        assert link is not None

        def counted(
            op: Callable[[Any], Any], call: Any = link.call, mine: list[str] = calls[replica]
        ) -> Any:
            if threading.current_thread() is threading.main_thread():
                mine.append("call")
            return call(op)

        monkeypatch.setattr(link, "call", counted)
    read = a.plan_search(CAPSULE, QUERY)
    assert a.cached_json(read) is None
    assert calls[a] == []  # the event loop's lookup
    computed = a.run_json(read, asked=True)
    assert calls[a] == []  # view current, query known: computed here, shared by the sharer
    assert a.results.flush()
    assert a.results.stats()["shared"] >= 1
    # B has never embedded the query: it looks in Redis (a GET, not a model call) and
    # answers the same bytes
    b.current_version("plant")
    calls[b].clear()
    assert b.run_json(b.plan_search(CAPSULE, QUERY)) == computed
    assert b.results.shared_hits == 1
    assert b.query_vectors.known(QUERY.query) is None
