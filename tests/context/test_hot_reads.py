"""Hot reads: the learning worker recomputes the reads asked again since its last batch at
the version it publishes, and what it puts in the result cache is the uncached answer."""

from __future__ import annotations

from dataclasses import dataclass

from tests.context.conftest import ServiceFactory
from tests.context.test_retrieval_survives_writes import (
    CAPSULE,
    PROMPTS,
    same_answer,
    trajectory,
)
from trifecta.context.hot_reads import HotReads
from trifecta.context.models import Retrieval, RetrieveRequest


@dataclass(frozen=True)
class Ask:
    domain: str
    key: str


def test_a_read_is_hot_from_its_second_ask_and_taken_once_per_ask_since() -> None:
    hot: HotReads[Ask] = HotReads(kept=8, per_write=2)
    once, twice, thrice = Ask("d", "once"), Ask("d", "twice"), Ask("d", "thrice")
    hot.asked(once)
    for read in (twice, twice, thrice, thrice, thrice):
        hot.asked(read)
    assert hot.take("d") == [thrice, twice]  # most recently asked first; `once` is not hot
    assert hot.take("d") == []  # nobody asked since: not recomputed again
    hot.asked(twice)
    assert hot.take("d") == [twice]
    assert hot.take("other") == []
    assert hot.stats() == {"hot_reads": 3, "hot_refreshed": 3}


def test_at_most_per_write_are_taken_and_none_not_asked_since_the_last_write() -> None:
    hot: HotReads[Ask] = HotReads(kept=8, per_write=1)
    a, b = Ask("d", "a"), Ask("d", "b")
    for read in (a, a, b, b):
        hot.asked(read)
    assert hot.take("d") == [b]  # the most recently asked
    assert hot.take("d") == []  # `a` was last asked before the previous write
    hot.asked(a)
    assert hot.take("d") == [a]


def test_off_at_zero_and_bounded_per_domain() -> None:
    off: HotReads[Ask] = HotReads(kept=8, per_write=0)
    off.asked(Ask("d", "a"))
    off.asked(Ask("d", "a"))
    assert off.take("d") == [] and off.stats()["hot_reads"] == 0
    hot: HotReads[Ask] = HotReads(kept=2, per_write=4)
    for key in ("a", "a", "b", "c"):
        hot.asked(Ask("d", key))
    assert hot.stats()["hot_reads"] == 2  # `a` was the least recently asked


def test_the_worker_answers_a_hot_retrieve_at_its_new_version_as_the_uncached_path(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    cached = make_service(sqlite_url, redis_url="")
    uncached = make_service(sqlite_url, cache=False)
    request = RetrieveRequest(query=PROMPTS[1], k_memories=3)
    once = RetrieveRequest(query=PROMPTS[2], k_memories=3)
    try:
        cached.learn(trajectory(1, 1, True))
        cached.retrieve(CAPSULE, request)
        cached.retrieve(CAPSULE, request)  # asked twice: hot
        cached.retrieve(CAPSULE, once)
        queries = cached.query_vectors.stats()
        cached.submit(trajectory(2, 1, False))
        assert cached.drain(60)
        version = cached.current_version("plant")
        plan = cached.plan_retrieve(CAPSULE, request)
        kept = cached.results.get("plant", version, plan.key, Retrieval)
        assert kept is not None  # computed by the worker before it published `version`
        assert kept.version == version
        assert (
            cached.results.get("plant", version, cached.plan_retrieve(CAPSULE, once).key, Retrieval)
            is None
        )  # asked once: left to its next ask
        assert cached.query_vectors.stats() == queries  # the worker's asks are not counted
        assert cached.cache_stats()["hot_refreshed"] == 1
        misses = cached.results.stats()["misses"]
        answer = cached.retrieve(CAPSULE, request)
        assert cached.results.stats()["misses"] == misses  # a hit
        assert any(h.memory.outcome == "failure" for h in answer.memories)
        same_answer(answer, uncached.retrieve(CAPSULE, request))
    finally:
        cached.close()
