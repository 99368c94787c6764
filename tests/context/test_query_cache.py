"""Query embeddings: cached by text, and concurrent misses embedded together in one call."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from trifecta.context import query_cache
from trifecta.context.query_cache import MAX_BATCH, ArrivingGroup, QueryEmbeddings, arriving
from trifecta.context.sql import Vector


def vector_of(text: str) -> Vector:
    """A deterministic stand-in embedding: each caller can check it got its own text's."""
    rng = np.random.default_rng(abs(hash(text)) % 2**32)
    v = rng.standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


class GatedEmbedder:
    """Records every call; the first call blocks until released, so that other callers pile
    up behind it as they would behind a slow forward pass."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> list[Vector]:
        with self.lock:
            self.calls.append(list(texts))
            first = len(self.calls) == 1
        if first:
            self.entered.set()
            assert self.release.wait(10)
        return [vector_of(t) for t in texts]


def test_concurrent_misses_share_one_call_and_each_gets_its_own_vector() -> None:
    embed = GatedEmbedder()
    cache = QueryEmbeddings(embed, max_entries=100)
    texts = [f"q{i}" for i in range(20)] + ["q3", "q7"]  # two ask what another asks
    with ThreadPoolExecutor(len(texts) + 1) as pool:
        first = pool.submit(cache.vector, "first")
        assert embed.entered.wait(5)
        rest = [pool.submit(cache.vector, t) for t in texts]
        while cache.stats()["misses"] < 1 + len(texts):  # every caller is waiting
            threading.Event().wait(0.005)
        embed.release.set()
        got = [f.result(10) for f in rest]
        assert np.array_equal(first.result(10), vector_of("first"))
    for text, vector in zip(texts, got, strict=True):
        assert np.array_equal(vector, vector_of(text))
    # the first call, then one call for everything that waited behind it (each text once)
    assert len(embed.calls) == 2
    assert sorted(embed.calls[1]) == sorted(set(texts))
    assert cache.stats()["calls"] == 2
    assert np.array_equal(cache.vector("q5"), vector_of("q5"))  # now a hit
    assert len(embed.calls) == 2 and cache.stats()["hits"] == 1


def test_a_batch_is_bounded_and_every_waiter_is_served() -> None:
    embed = GatedEmbedder()
    cache = QueryEmbeddings(embed, max_entries=0)  # cache off: coalescing still applies
    texts = [f"t{i}" for i in range(MAX_BATCH + 10)]
    with ThreadPoolExecutor(len(texts) + 1) as pool:
        pool.submit(cache.vector, "first")
        assert embed.entered.wait(5)
        futures = [pool.submit(cache.vector, t) for t in texts]
        while cache.stats()["misses"] < 1 + len(texts):
            threading.Event().wait(0.005)
        embed.release.set()
        for text, future in zip(texts, futures, strict=True):
            assert np.array_equal(future.result(10), vector_of(text))
    assert max(len(c) for c in embed.calls) <= MAX_BATCH
    assert sum(len(c) for c in embed.calls) == len(texts) + 1
    assert cache.stats()["entries"] == 0


def test_a_failing_embedder_fails_every_caller_of_the_batch_and_recovers() -> None:
    broken = True

    def embed(texts: Sequence[str]) -> list[Vector]:
        if broken:
            raise RuntimeError("model gone")
        return [vector_of(t) for t in texts]

    cache = QueryEmbeddings(embed, max_entries=10)
    with pytest.raises(RuntimeError, match="model gone"):
        cache.vector("a")
    broken = False
    assert np.array_equal(cache.vector("a"), vector_of("a"))
    assert cache.vector("a").flags.writeable is False


class Recording:
    """Records every call's texts and answers at once."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> list[Vector]:
        self.calls.append(list(texts))
        return [vector_of(t) for t in texts]


def test_a_group_started_together_shares_one_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first of a group to reach the embedder waits for the others to ask or to leave
    without asking (a result-cache hit), then embeds every query asked in one call."""
    monkeypatch.setattr(query_cache, "GROUP_WAIT_S", 10.0)  # ends when all have arrived
    embed = Recording()
    cache = QueryEmbeddings(embed, max_entries=10)
    cache.vector("known")
    group = ArrivingGroup(4)

    def member(text: str | None) -> Vector:
        with arriving(group):  # None: leaves without asking
            return cache.vector(text) if text is not None else vector_of("none")

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(member, "a")
        while not cache._busy:  # the first is waiting for its group
            threading.Event().wait(0.001)
        rest = [pool.submit(member, t) for t in ("b", "known", None)]
        assert np.array_equal(first.result(10), vector_of("a"))
        assert np.array_equal(rest[0].result(10), vector_of("b"))
        assert np.array_equal(rest[1].result(10), vector_of("known"))
        assert np.array_equal(rest[2].result(10), vector_of("none"))
    assert embed.calls == [["known"], ["a", "b"]]


def test_the_first_of_a_group_waits_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(query_cache, "GROUP_WAIT_S", 0.05)
    embed = Recording()
    cache = QueryEmbeddings(embed, max_entries=10)
    with arriving(ArrivingGroup(2)):  # the other member never comes
        started = time.monotonic()
        assert np.array_equal(cache.vector("a"), vector_of("a"))
        waited = time.monotonic() - started
    assert 0.05 <= waited < 5 and embed.calls == [["a"]]
    cache.vector("b")  # outside a group: no wait
    assert embed.calls == [["a"], ["b"]]


def test_a_group_needs_a_member() -> None:
    with pytest.raises(ValueError, match="members"):
        ArrivingGroup(0)


def test_the_waits_of_a_thread_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """`waited_s` grows by the time the first of a group waited for the others, and by the
    time a caller waited for a batch embedded on another thread; not by its own forward."""
    monkeypatch.setattr(query_cache, "GROUP_WAIT_S", 0.2)
    cache = QueryEmbeddings(Recording(), max_entries=10)
    before = query_cache.waited_s()
    with arriving(ArrivingGroup(2)):  # the other member never comes: the whole wait
        cache.vector("a")
    assert 0.2 <= query_cache.waited_s() - before < 5
    before = query_cache.waited_s()
    cache.vector("b")  # alone: no wait
    assert query_cache.waited_s() - before < 0.05

    embed = GatedEmbedder()
    gated = QueryEmbeddings(embed, max_entries=10)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(gated.vector, "first")
        assert embed.entered.wait(5)
        threading.Timer(0.2, embed.release.set).start()
        before = query_cache.waited_s()
        gated.vector("behind")  # waits for the first's forward, then embeds its own
        assert 0.15 <= query_cache.waited_s() - before < 5
        first.result(10)


def test_an_announced_caller_joins_the_forward_of_one_already_asking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller that finds the embedder free while another announced itself (`coming`)
    waits for it to ask, and both queries share one call; one leaving without asking (a
    result-cache hit) ends the wait as well."""
    monkeypatch.setattr(query_cache, "COMING_WAIT_S", 10.0)  # ends when all have arrived
    embed = Recording()
    cache = QueryEmbeddings(embed, max_entries=10)
    asked = threading.Event()
    go = threading.Event()

    def late(text: str | None) -> Vector | None:
        with cache.coming():
            asked.set()
            assert go.wait(10)  # its read's steps before the embedding
            return cache.vector(text) if text is not None else None

    with ThreadPoolExecutor(2) as pool:
        other = pool.submit(late, "b")
        assert asked.wait(5)
        first = pool.submit(cache.vector, "a")
        while not cache._busy:  # it found "b" announced and waits for it
            threading.Event().wait(0.001)
        go.set()
        assert np.array_equal(first.result(10), vector_of("a"))
        joined = other.result(10)
        assert joined is not None, "the announced caller asked for b"
        assert np.array_equal(joined, vector_of("b"))
    assert embed.calls == [["a", "b"]]

    go.clear()
    asked.clear()
    with ThreadPoolExecutor(2) as pool:
        leaving = pool.submit(late, None)  # announced, then leaves without asking
        assert asked.wait(5)
        first = pool.submit(cache.vector, "c")
        while not cache._busy:
            threading.Event().wait(0.001)
        go.set()
        assert np.array_equal(first.result(10), vector_of("c"))
        assert leaving.result(10) is None
    assert embed.calls == [["a", "b"], ["c"]]
    assert cache._coming == 0


def test_an_announced_caller_is_waited_for_a_bounded_time_and_never_by_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(query_cache, "COMING_WAIT_S", 0.05)
    embed = Recording()
    cache = QueryEmbeddings(embed, max_entries=10)
    with cache.coming(), cache.coming():  # nested: announced once, arrives by asking
        started = time.monotonic()
        assert np.array_equal(cache.vector("alone"), vector_of("alone"))
        assert time.monotonic() - started < 0.04  # nobody else was coming
    stuck = threading.Event()
    release = threading.Event()

    def announced_never_asks() -> None:
        with cache.coming():
            stuck.set()
            assert release.wait(10)

    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(announced_never_asks)
        assert stuck.wait(5)
        before = query_cache.waited_s()
        cache.vector("x")
        waited = query_cache.waited_s() - before
        release.set()
        other.result(10)
    assert 0.05 <= waited < 5  # the whole bound, counted as a wait
    assert embed.calls == [["alone"], ["x"]] and cache._coming == 0
