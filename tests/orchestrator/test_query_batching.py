"""The context hop's retrievals embed their queries together: requests in flight at once wait
for the encoder side by side and share its next forward (`context_hop.RETRIEVAL_THREADS`;
the coalescing is `context/query_cache.py`'s), a lone request embeds at once on its own
thread, and every caller gets its own query's vector."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from trifecta.context import query_cache
from trifecta.context.facade import ContextService
from trifecta.context.query_cache import ArrivingGroup, arriving
from trifecta.orchestrator import context_hop
from trifecta.orchestrator.context_hop import RETRIEVAL_THREADS
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.stack import Stack


class Recorder:
    """Wraps the process-wide embedder: records each call's texts, vectors and thread; the
    first call can be held until released, as a slow forward holds the queries behind it."""

    def __init__(
        self, embed: Callable[[Sequence[str]], NDArray[np.float32]], hold_first: bool = False
    ) -> None:
        self.embed = embed
        self.calls: list[tuple[list[str], np.ndarray, str]] = []
        self.entered, self.release = threading.Event(), threading.Event()
        if not hold_first:
            self.release.set()
        self.fail: BaseException | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        first = not self.calls
        vectors = self.embed(texts)
        self.calls.append((list(texts), vectors, threading.current_thread().name))
        if first:
            self.entered.set()
            assert self.release.wait(60)
        if self.fail is not None:
            raise self.fail
        return vectors


def _prompts(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]  # never asked before: every one misses the query cache
    return [f"{tag}: what is {i} + {3 * i}?" for i in range(n)]


def _misses(context: ContextService) -> int:
    return context.query_vectors.stats()["misses"]


def _wait_for_misses(context: ContextService, count: int) -> None:
    deadline = time.monotonic() + 60
    while _misses(context) < count:
        assert time.monotonic() < deadline, "the retrievals did not all reach the encoder"
        time.sleep(0.01)


@pytest.mark.slow
def test_concurrent_retrievals_share_one_forward_and_get_their_own_vectors(
    stack: Stack, context: ContextService, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = context.embedder
    recorder = Recorder(embedder.embed, hold_first=True)
    monkeypatch.setattr(embedder, "embed", recorder)
    capsule = stack.capsules.all()[0]
    env = stack.place_domain(capsule.domain)
    hop = Orchestrator(stack.parts).context_hop
    first, *rest = _prompts(16)
    assert len(rest) + 1 <= RETRIEVAL_THREADS
    misses = _misses(context)
    started = [hop.start_retrieval(capsule, env, first)]
    assert recorder.entered.wait(60)
    started += [hop.start_retrieval(capsule, env, p) for p in rest]
    _wait_for_misses(context, misses + 16)  # all 15 wait behind the held forward at once
    recorder.release.set()
    retrievals = [f.result(60)[0] for f in started]
    assert all(r is not None for r in retrievals)
    # One forward for the first, one for the 15 that waited (the default 6 threads: <= 5).
    assert [sorted(texts) for texts, _, _ in recorder.calls] == [[first], sorted(rest)]
    monkeypatch.undo()
    for texts, vectors, _ in recorder.calls:
        alone = np.concatenate([embedder.embed([t]) for t in texts])
        # Each row is its own text's vector: nearest to it, and equal up to the embedder's
        # precision (bfloat16 weights on CPUs that have them give a batch's rows within
        # cosine 0.9995 of the rows embedded alone: tests/core/test_embed_precision.py).
        similarity = vectors @ alone.T
        assert (similarity.argmax(axis=1) == np.arange(len(texts))).all()
        assert np.diag(similarity).min() >= 0.9995


def test_a_lone_retrieval_embeds_at_once_on_its_own_thread(
    stack: Stack, context: ContextService, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = context.embedder
    recorder = Recorder(embedder.embed)
    monkeypatch.setattr(embedder, "embed", recorder)
    capsule = stack.capsules.all()[0]
    (prompt,) = _prompts(1)
    retrieval, trace = (
        Orchestrator(stack.parts)
        .context_hop.start_retrieval(capsule, stack.place_domain(capsule.domain), prompt)
        .result(60)
    )
    assert retrieval is not None and trace.hops[0].ok
    # No hand-off to another thread and no timer: the request's own retrieval thread embeds.
    ((texts, _, thread),) = recorder.calls
    assert texts == [prompt] and thread.startswith("retrieve")


def test_a_failed_forward_fails_its_own_callers_and_not_the_next(
    stack: Stack, context: ContextService, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = context.embedder
    recorder = Recorder(embedder.embed)
    recorder.fail = RuntimeError("encoder out of memory")
    monkeypatch.setattr(embedder, "embed", recorder)
    capsule = stack.capsules.all()[0]
    env = stack.place_domain(capsule.domain)
    hop = Orchestrator(stack.parts).context_hop
    bad, good = _prompts(2)
    with pytest.raises(RuntimeError, match="out of memory"):
        hop.start_retrieval(capsule, env, bad).result(60)
    recorder.fail = None
    retrieval, _ = hop.start_retrieval(capsule, env, good).result(60)
    assert retrieval is not None and [c[0] for c in recorder.calls] == [[bad], [good]]


def test_retrievals_gathered_while_requests_are_in_flight_start_together(
    stack: Stack, context: ContextService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_hop, "GATHER_S", 60.0)  # only the count starts them here
    embedder = context.embedder
    recorder = Recorder(embedder.embed)
    monkeypatch.setattr(embedder, "embed", recorder)
    capsule = stack.capsules.all()[0]
    env = stack.place_domain(capsule.domain)
    hop = Orchestrator(stack.parts).context_hop
    *first, last = _prompts(context_hop.GATHER_MAX)
    misses = _misses(context)
    with hop.serving(), hop.serving():  # another request in flight could join
        started = [hop.start_retrieval(capsule, env, p) for p in first]
        time.sleep(0.3)
        assert recorder.calls == [] and _misses(context) == misses  # none has started
        started.append(hop.start_retrieval(capsule, env, last))  # the batch is full: all go
        retrievals = [f.result(60)[0] for f in started]
    assert all(r is not None for r in retrievals)
    assert sorted(t for texts, _, _ in recorder.calls for t in texts) == sorted([*first, last])


def test_a_gathered_retrieval_starts_when_asked_for_or_when_its_window_closes(
    stack: Stack, context: ContextService, monkeypatch: pytest.MonkeyPatch
) -> None:
    capsule = stack.capsules.all()[0]
    env = stack.place_domain(capsule.domain)
    hop = Orchestrator(stack.parts).context_hop
    asked, unasked = _prompts(2)
    with hop.serving(), hop.serving():
        monkeypatch.setattr(context_hop, "GATHER_S", 60.0)
        began = time.monotonic()
        retrieval, trace = hop.start_retrieval(capsule, env, asked).result(30)  # starts now
        assert retrieval is not None and trace.hops[0].ok
        assert time.monotonic() - began < 30
        monkeypatch.setattr(context_hop, "GATHER_S", 0.3)
        misses = _misses(context)
        began = time.monotonic()
        gathered = hop.start_retrieval(capsule, env, unasked)
        _wait_for_misses(context, misses + 1)  # nobody asked for it: the window started it
        assert time.monotonic() - began >= 0.3
        assert gathered.result(60)[0] is not None


def test_a_retrievals_charge_leaves_out_its_wait_for_its_group(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first of a gathered group waits for the others before it embeds; that wait is in
    the hop's latency, not in the CPU seconds the ledger charges for it."""
    monkeypatch.setattr(query_cache, "GROUP_WAIT_S", 0.5)
    capsule = stack.capsules.all()[0]
    env = stack.place_domain(capsule.domain)
    hop = Orchestrator(stack.parts).context_hop
    (prompt,) = _prompts(1)  # a query-cache miss: it reaches the embedder
    with arriving(ArrivingGroup(2)):  # the other member never comes: the whole wait
        retrieval, trace = hop._retrieve(capsule, env, prompt)
    assert retrieval is not None
    (retrieved,) = trace.hops
    (charge,) = trace.charges
    assert retrieved.ok and retrieved.latency_ms >= 500
    assert 0 < charge.accelerator_seconds < retrieved.latency_ms / 1000 - 0.45
