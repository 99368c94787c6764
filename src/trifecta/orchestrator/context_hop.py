"""The loop's context hop (docs/architecture.md, "The request path", step 2).

On the request path: the domain's playbook, whose routing rules steer the route, a read the
context layer caches by the domain's version (no embedding). Beside the layer call, and only
for the routes whose layer may read context: the query's retrieval (ranked bullets and the
most similar memories), which needs the prompt's embedding. Each records its hop and its
CPU charge in the request's trace.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context

from trifecta.context.models import PlaybookView, Retrieval, RetrieveRequest
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


class ContextHop:
    def __init__(self, bridge: Bridge, pricer: Pricer, metrics: LoopMetrics):
        self.bridge = bridge
        self.pricer = pricer
        self.metrics = metrics
        # Retrievals run on these threads while the request's own thread waits on its layer.
        self._pool = ThreadPoolExecutor(RETRIEVAL_THREADS, thread_name_prefix="retrieve")

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

    def start_retrieval(
        self, capsule: Capsule, env: str, prompt: str
    ) -> Future[tuple[Retrieval | None, Trace]]:
        """The query's retrieval on another thread, with a trace of its own (the caller
        merges it when it joins)."""
        # In the caller's context: the request's pinned capsule (`parts.CapsuleDirectory`).
        return self._pool.submit(copy_context().run, self._retrieve, capsule, env, prompt)

    def _retrieve(self, capsule: Capsule, env: str, prompt: str) -> tuple[Retrieval | None, Trace]:
        trace = Trace()
        started = time.perf_counter()
        try:
            retrieval = self.bridge.context(capsule, env).retrieve(
                capsule.id, RetrieveRequest(query=prompt, k_memories=MEMORIES_PER_REQUEST)
            )
        except Unavailable as exc:  # the layer serves without them
            self._failed(trace, started, env, exc)
            return None, trace
        detail = f"{len(retrieval.bullets)} bullets, {len(retrieval.memories)} memories"
        self._done(trace, started, env, "retrieve", detail)
        return retrieval, trace

    def _done(self, trace: Trace, started: float, env: str, model: str, detail: str) -> None:
        trace.hop(started, layer="context", environment=env, model=model, ok=True, detail=detail)
        seconds = time.perf_counter() - started
        trace.charges.append(
            self.pricer.cpu_seconds(layer="context", environment=env, seconds=seconds)
        )

    def _failed(self, trace: Trace, started: float, env: str, exc: Unavailable) -> None:
        trace.failed(started, "context", env, "context", exc.one_line())
        self.metrics.fallbacks.labels("context", env).inc()
