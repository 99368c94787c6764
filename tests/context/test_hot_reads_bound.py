"""The hot reads keep a read from its second ask (issue 16): its first is remembered by hash,
so a stream of prompts asked once (most of a generated one) fills neither `hot_reads_kept`
nor memory with reads and their closures, and what is taken after a write is unchanged."""

from __future__ import annotations

import gc
import random
import tracemalloc
from dataclasses import dataclass, field

from tests.context.conftest import ServiceFactory
from tests.context.test_retrieval_survives_writes import CAPSULE, PROMPTS
from trifecta.context.hot_reads import HotReads
from trifecta.context.models import RetrieveRequest
from trifecta.context.settings import ContextSettings
from trifecta.core.heap_report import tracked_sizes


@dataclass(frozen=True)
class Ask:
    domain: str
    key: str
    payload: str = field(default="", compare=False)  # a read's request and closure


def test_reads_asked_once_are_not_kept() -> None:
    hot: HotReads[Ask] = HotReads(kept=256, per_write=8, first_asks=64)
    for i in range(1000):
        hot.asked(Ask("d", f"once-{i}"))
    assert hot.stats()["hot_reads"] == 0
    again = Ask("d", "again")
    hot.asked(again)
    hot.asked(again)
    assert hot.stats()["hot_reads"] == 1
    assert hot.take("d") == [again]


def test_what_is_taken_is_the_same_with_and_without_the_doorkeeper() -> None:
    rng = random.Random(0)
    keys = [f"k{i}" for i in range(12)]  # the repeated prompts: fewer than `kept`
    # Without the doorkeeper the fresh prompts push repeated ones out of a small bound
    # before their second ask, so the plain one here never drops any: the reads taken are
    # then the same, and the doorkeeper needs 16 kept where the plain one needs all.
    plain: HotReads[Ask] = HotReads(kept=100_000, per_write=4)
    gated: HotReads[Ask] = HotReads(kept=16, per_write=4, first_asks=4096)
    for step in range(3000):
        if step % 25 == 24:  # a write takes the hot reads
            assert gated.take("d") == plain.take("d")
            continue
        read = Ask("d", rng.choice(keys) if rng.random() < 0.5 else f"fresh-{step}")
        plain.asked(read)
        gated.asked(read)
    assert gated.stats()["hot_reads"] == len(keys)
    assert plain.stats()["hot_reads"] > 1000  # every fresh prompt too


def test_memory_held_by_a_stream_of_first_asks_is_the_hashes_only() -> None:
    def held(first_asks: int) -> float:
        hot: HotReads[Ask] = HotReads(kept=256, per_write=8, first_asks=first_asks)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(256):
                hot.asked(Ask("d", f"prompt {i}", payload=f"{i:>1000}"))
            gc.collect()
            return (tracemalloc.get_traced_memory()[0] - before) / 256
        finally:
            tracemalloc.stop()

    assert held(0) > 1000  # each read kept with its 1 KB payload
    assert held(1024) < 200  # a hash each


def test_the_service_keeps_a_retrieve_from_its_second_ask(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    service = make_service(sqlite_url, redis_url="")
    try:
        assert service.hot_reads.first_asks == ContextSettings().standing_searches_first_asks
        service.retrieve(CAPSULE, RetrieveRequest(query=PROMPTS[1], k_memories=3))
        assert service.cache_stats()["hot_reads"] == 0
        service.retrieve(CAPSULE, RetrieveRequest(query=PROMPTS[1], k_memories=3))
        assert service.cache_stats()["hot_reads"] == 1
    finally:
        service.close()


def test_the_first_asks_are_in_the_sizes_report_within_their_bound() -> None:
    hot: HotReads[Ask] = HotReads(kept=8, per_write=2, first_asks=16)
    for i in range(100):
        hot.asked(Ask("sized", f"once-{i}"))
    held = tracked_sizes()["context first asks (hashes)"]
    # Other live trackers (other tests' views) are summed in: this one adds 16 of 16.
    assert held["entries"] <= held["bound"]
    assert hot._domains["sized"].firsts.entries == hot._domains["sized"].firsts.bound == 16
