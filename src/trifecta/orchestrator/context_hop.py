"""The loop's context hop (docs/architecture.md, "The request path", step 2).

On the request path: the domain's playbook, whose routing rules steer the route, a read the
context layer caches by the domain's version (no embedding). Beside the layer call, and only
for the routes whose layer may read context: the query's retrieval (ranked bullets and the
most similar memories), which needs the prompt's embedding. Each records its hop and its
CPU charge in the request's trace.

Retrievals are gathered before they start while other requests are in flight: the query
embedder coalesces the misses that wait for it together into one forward
(`context/query_cache.py`), and a forward's fixed cost dominates at the loop's batch sizes
(MiniLM, one torch thread, this Xeon: one query 6.0 ms of CPU, four 9.5, eight 13.0), but
retrievals started the moment their request reached the hop met a busy encoder rarely (1.3
queries a forward in `benchmarks/loop.py`'s 16-worker passes). A gathered retrieval starts
when `GATHER_MAX` are waiting, `GATHER_S` after the first of them, or when its own request
asks for its result (its layer answered first: the request then waits for the retrieval's
own time, never for the window); a request alone in the loop starts its retrieval at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import Context, copy_context
from dataclasses import dataclass, field

from trifecta.context.models import PlaybookView, Retrieval, RetrieveRequest
from trifecta.context.query_cache import ArrivingGroup, arriving, waited_s
from trifecta.core.errors import Unavailable
from trifecta.federation.bridge import Bridge
from trifecta.fleet.capsules import Capsule
from trifecta.orchestrator.ledger import Pricer
from trifecta.orchestrator.metrics import LoopMetrics
from trifecta.orchestrator.trace import Trace

MEMORIES_PER_REQUEST = 3
# Retrievals in flight at once. They mostly wait for the query embedder, which embeds the
# queries waiting together in one forward (`context/query_cache.py`), so the more of them wait
# the fewer forwards: with the executor's default (6 threads on 2 cores) a 16-worker run's
# batches averaged 3.1 queries, with 32 threads 5.9 (docs/orchestrator.md).
RETRIEVAL_THREADS = 32
# How long a retrieval may wait for others to start with it, and how many start together.
# The layers the retrieval runs beside take longer than this under load (the cognitive
# route's p50 with 16 requests in flight: 180 ms), and a request whose layer answers first
# starts its gathered retrievals itself.
GATHER_S = 0.06
GATHER_MAX = 8

Retrieved = tuple[Retrieval | None, Trace]


class GatheredRetrieval(Future[Retrieved]):
    """A retrieval's future that may not have started yet: asking for its result starts the
    retrievals gathered with it, so the caller never waits on the gathering window."""

    def __init__(self, hop: ContextHop):
        super().__init__()
        self._hop = hop
        self.launched = False  # set (under the hop's lock) when it leaves the gathering

    def result(self, timeout: float | None = None) -> Retrieved:
        self._hop._start_gathered(self)
        return super().result(timeout)


@dataclass
class _Gathered:
    """The retrievals waiting to start together (one generation: a start empties it)."""

    items: list[tuple[GatheredRetrieval, Context, Capsule, str, str]] = field(default_factory=list)
    generation: int = 0


class ContextHop:
    def __init__(self, bridge: Bridge, pricer: Pricer, metrics: LoopMetrics):
        self.bridge = bridge
        self.pricer = pricer
        self.metrics = metrics
        # Retrievals run on these threads while the request's own thread waits on its layer.
        self._pool = ThreadPoolExecutor(RETRIEVAL_THREADS, thread_name_prefix="retrieve")
        self._gathered = _Gathered()
        self._cond = threading.Condition()
        # Requests inside `serving`, one item each: a list's append and pop are atomic, so
        # counting takes no lock (taking the condition's twice a request was 2% of the
        # loop's samples with 16 requests in flight, py-spy).
        self._in_flight: list[None] = []

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Count a request in flight for the duration of the block: a retrieval gathers
        only while another request could join it."""
        self._in_flight.append(None)
        try:
            yield
        finally:
            self._in_flight.pop()

    def playbook(self, capsule: Capsule, env: str, trace: Trace) -> PlaybookView | None:
        """The domain's playbook; None when the shard's environment is down: the request is
        served without context and not learned from."""
        started = time.perf_counter()
        try:
            playbook = self.bridge.context(capsule, env).playbook(capsule.id)
        except Unavailable as exc:  # serve without context rather than fail the request
            self._failed(trace, started, env, exc)
            return None
        self._done(trace, started, env, "playbook", f"{len(playbook.bullets)} bullets")
        return playbook

    def start_retrieval(self, capsule: Capsule, env: str, prompt: str) -> Future[Retrieved]:
        """The query's retrieval on another thread, with a trace of its own (the caller
        merges it when it joins); gathered with others' while requests are in flight."""
        future = GatheredRetrieval(self)
        # In the caller's context: the request's pinned capsule (`parts.CapsuleDirectory`).
        item = (future, copy_context(), capsule, env, prompt)
        with self._cond:
            if len(self._in_flight) <= 1:  # alone: nothing would join it
                future.launched = True
                ready = [item]
            else:
                gathered = self._gathered
                gathered.items.append(item)
                if len(gathered.items) == 1:  # the first of a gathering sets its deadline
                    self._pool.submit(self._start_later, gathered.generation)
                ready = self._take() if len(gathered.items) >= GATHER_MAX else []
        self._launch(ready)
        return future

    def _take(self) -> list[tuple[GatheredRetrieval, Context, Capsule, str, str]]:
        """Empty the gathering (under the lock) and wake its timer."""
        items, self._gathered = self._gathered.items, _Gathered([], self._gathered.generation + 1)
        for item in items:
            item[0].launched = True
        self._cond.notify_all()
        return items

    def _start_gathered(self, future: GatheredRetrieval) -> None:
        if future.launched:  # most are by the time their request asks: no lock to take
            return
        with self._cond:
            waiting = any(item[0] is future for item in self._gathered.items)
            ready = self._take() if waiting else []
        self._launch(ready)

    def _start_later(self, generation: int) -> None:
        deadline = time.monotonic() + GATHER_S
        with self._cond:
            while self._gathered.generation == generation:
                left = deadline - time.monotonic()
                if left <= 0:
                    ready = self._take()
                    break
                self._cond.wait(left)
            else:
                return
        self._launch(ready)

    def _launch(self, items: list[tuple[GatheredRetrieval, Context, Capsule, str, str]]) -> None:
        # Started together, their queries are embedded together: the first to reach the
        # embedder waits for the others (`context/query_cache.py`) instead of embedding alone.
        group = ArrivingGroup(len(items)) if len(items) > 1 else None
        for future, context, capsule, env, prompt in items:
            self._pool.submit(context.run, self._retrieve_into, future, capsule, env, prompt, group)

    def _retrieve_into(
        self,
        future: GatheredRetrieval,
        capsule: Capsule,
        env: str,
        prompt: str,
        group: ArrivingGroup | None,
    ) -> None:
        try:
            if group is None:
                future.set_result(self._retrieve(capsule, env, prompt))
            else:
                with arriving(group):
                    future.set_result(self._retrieve(capsule, env, prompt))
        except BaseException as exc:
            future.set_exception(exc)

    def _retrieve(self, capsule: Capsule, env: str, prompt: str) -> Retrieved:
        trace = Trace()
        started, waited = time.perf_counter(), waited_s()
        try:
            retrieval = self.bridge.context(capsule, env).retrieve(
                capsule.id, RetrieveRequest(query=prompt, k_memories=MEMORIES_PER_REQUEST)
            )
        except Unavailable as exc:  # the layer serves without them
            self._failed(trace, started, env, exc)
            return None, trace
        detail = f"{len(retrieval.bullets)} bullets, {len(retrieval.memories)} memories"
        # Charged its time less its waits in the query embedder (for its gathered group, or
        # for a forward another retrieval's thread runs and is charged for): the hop's
        # latency keeps them.
        self._done(trace, started, env, "retrieve", detail, waited_s() - waited)
        return retrieval, trace

    def _done(
        self, trace: Trace, started: float, env: str, model: str, detail: str, waits: float = 0.0
    ) -> None:
        trace.hop(started, layer="context", environment=env, model=model, ok=True, detail=detail)
        seconds = max(0.0, time.perf_counter() - started - waits)
        trace.charges.append(
            self.pricer.cpu_seconds(layer="context", environment=env, seconds=seconds)
        )

    def _failed(self, trace: Trace, started: float, env: str, exc: Unavailable) -> None:
        trace.failed(started, "context", env, "context", exc.one_line())
        self.metrics.fallbacks.labels("context", env).inc()
