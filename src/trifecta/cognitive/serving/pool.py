"""A tier: its replicas behind the scoring router, fed by per-capsule fair queues.

Requests wait in the tier's fair queue, not at the replicas: a replica takes a new request only
while it has a free batch slot (plus a short local queue so it never idles between a request
leaving and the next arriving). So whoever floods the tier waits in its own queue, and the
order in which the replicas receive work is the fair queue's, not the order of arrival.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.engine import BatchingEngine
from trifecta.cognitive.serving.fair_queue import FairQueue, RequestQueue
from trifecta.cognitive.serving.prefix_cache import block_hashes
from trifecta.cognitive.serving.requests import (
    Completion,
    EngineRequest,
    GeneratedToken,
    ReplicaLoad,
    RequestSink,
    generate_all,
)
from trifecta.cognitive.serving.router import ScoringRouter
from trifecta.cognitive.serving.slot_shares import SlotShares
from trifecta.core.errors import QuotaExceeded
from trifecta.core.protocols import Generation

DEFAULT_TENANT = "default"


class NotifyingSink:
    """Passes events on to `inner`; when the request is over, first calls `on_end` (free its
    slot, start the next request), then tells `inner`."""

    def __init__(self, inner: RequestSink, on_end: Callable[[], None]):
        self.inner = inner
        self._on_end = on_end

    def tokens(self, generated: Sequence[GeneratedToken]) -> None:
        self.inner.tokens(generated)

    def finish(self, completion: Completion) -> None:
        try:
            self._on_end()
        finally:
            self.inner.finish(completion)

    def fail(self, error: BaseException) -> None:
        try:
            self._on_end()
        finally:
            self.inner.fail(error)


class Dispatcher(Protocol):
    """Where a tier's requests go once they leave the fair queue: local engines or Ray Serve."""

    def has_room(self) -> bool: ...

    def slots(self) -> int:
        """Batch slots across the running replicas (what capsules' slot shares divide)."""
        ...

    def latency_slots(self, budget: float) -> int:
        """Of those, the rows the replicas decode within `1 + budget` of a one-row step."""
        ...

    def send(self, request: EngineRequest) -> None: ...

    def cancel(self, request_id: str) -> None: ...

    def loads(self) -> list[ReplicaLoad]: ...

    def close(self) -> None: ...


class LocalReplicas:
    """In-process replicas, each a `BatchingEngine`, chosen per request by the scoring router."""

    def __init__(
        self,
        engines: Sequence[BatchingEngine],
        *,
        router: ScoringRouter | None = None,
        queue_depth: int = 2,
    ):
        if not engines:
            raise ValueError("a tier needs at least one replica")
        self.engines = {engine.name: engine for engine in engines}
        self.router = router or ScoringRouter()
        self.router.fit_index(
            sum(e.prefix_cache.capacity_tokens // e.prefix_cache.block_size for e in engines)
        )
        self.queue_depth = queue_depth
        self.block_size = engines[0].prefix_cache.block_size
        self._in_flight = dict.fromkeys(self.engines, 0)
        self._where: dict[str, str] = {}
        self._lock = threading.Lock()

    def _capacity(self, name: str) -> int:
        return self.engines[name].max_batch + self.queue_depth

    def has_room(self) -> bool:
        with self._lock:
            return any(count < self._capacity(name) for name, count in self._in_flight.items())

    def slots(self) -> int:
        return sum(engine.max_batch for engine in self.engines.values())

    def latency_slots(self, budget: float) -> int:
        return sum(engine.latency_batch(budget) for engine in self.engines.values())

    def loads(self) -> list[ReplicaLoad]:
        return [engine.load() for engine in self.engines.values()]

    def send(self, request: EngineRequest) -> None:
        hashes = block_hashes(request.prompt_ids, self.block_size)
        with self._lock:
            room = [
                load
                for load in self.loads()
                if self._in_flight[load.name] < self._capacity(load.name)
            ]
            if not room:
                raise RuntimeError("send() without room: check has_room() first")
            name = self.router.choose(hashes, room)
            self._in_flight[name] += 1
            self._where[request.request_id] = name
        # The callback names the request's id, not the request: a closure over the request
        # would make request -> sink -> callback -> request a cycle, and every finished request
        # garbage only a full collection frees (60,000 objects, 77 ms of the replica's thread
        # in one collection under the benchmark's flood).
        request_id = request.request_id
        request.sink = NotifyingSink(request.sink, lambda: self._done(request_id, name))
        self.engines[name].submit(request)

    def _done(self, request_id: str, name: str) -> None:
        with self._lock:
            self._in_flight[name] -= 1
            self._where.pop(request_id, None)

    def cancel(self, request_id: str) -> None:
        with self._lock:
            name = self._where.get(request_id)
        if name is not None:
            self.engines[name].cancel(request_id)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


class TierPool:
    """One tier: fair queuing in front, a dispatcher behind. Also a `LanguageModel`."""

    def __init__(
        self,
        tier: str,
        dispatcher: Dispatcher,
        codec: TokenCodec,
        *,
        context_length: int,
        queue: RequestQueue[EngineRequest] | None = None,
        max_queued_per_capsule: int = 1024,
        slot_shares: SlotShares | None = None,
    ):
        self.tier = tier
        self.dispatcher = dispatcher
        self.codec = codec
        self.queue: RequestQueue[EngineRequest] = queue if queue is not None else FairQueue()
        self.slot_shares = slot_shares
        self.max_queued_per_capsule = max_queued_per_capsule
        self.context_length = context_length
        self._lock = threading.RLock()

    @property
    def name(self) -> str:
        return self.tier

    def submit(self, request: EngineRequest, *, share: float = 1.0) -> None:
        """Queue a request under its capsule; it starts when the fair queue reaches it."""
        tenant = request.capsule or DEFAULT_TENANT
        with self._lock:
            if self.queue.backlog(tenant) >= self.max_queued_per_capsule:
                if self.slot_shares is not None:
                    self.slot_shares.refused(tenant, share, request.cost)
                raise QuotaExceeded(
                    f"capsule {tenant!r} has {self.max_queued_per_capsule} requests waiting "
                    f"on tier {self.tier!r}",
                    retry_after=1.0,
                    field="capsule_id",
                )
            request.sink = NotifyingSink(request.sink, lambda: self._ended(tenant))
            self.queue.push(tenant, request, cost=request.cost, share=share)
            if self.slot_shares is not None:
                self.slot_shares.arrived(tenant, share, request.cost)
        self.dispatch()

    def _ended(self, tenant: str) -> None:
        if self.slot_shares is not None:
            with self._lock:
                self.slot_shares.ended(tenant)
        self.dispatch()

    def _eligible(self, tenant: str) -> bool:
        assert self.slot_shares is not None
        shares = self.slot_shares
        latency_slots = self.dispatcher.latency_slots(shares.step_budget)
        return shares.allows(tenant, self.dispatcher.slots(), latency_slots)

    def dispatch(self) -> None:
        """Move requests from the fair queue to the replicas while they have room."""
        while True:
            with self._lock:
                if not len(self.queue) or not self.dispatcher.has_room():
                    return
                request = self.queue.pop(self._eligible if self.slot_shares is not None else None)
                if request is None:
                    return
                if self.slot_shares is not None:
                    self.slot_shares.started(request.capsule or DEFAULT_TENANT)
                self.dispatcher.send(request)

    def cancel(self, request_id: str) -> None:
        """A client went away: drop its request from the queue, or free its batch slot."""
        with self._lock:
            queued = self.queue.remove(lambda r: r.request_id == request_id)
            if queued is not None and self.slot_shares is not None:
                # Counted as started: its sink's end below releases the slot again.
                self.slot_shares.started(queued.capsule or DEFAULT_TENANT)
        if queued is not None:
            queued.sink.finish(Completion("cancelled", len(queued.prompt_ids), 0))
        else:
            self.dispatcher.cancel(request_id)

    def queued(self) -> int:
        with self._lock:
            return len(self.queue)

    def close(self) -> None:
        self.dispatcher.close()

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        return generate_all(
            self.submit,
            self.codec,
            prompts,
            self.tier,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_logprobs=top_logprobs,
            stop=stop,
        )
