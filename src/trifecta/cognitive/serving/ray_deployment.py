"""A tier on Ray Serve: one deployment per tier, autoscaled on ongoing requests, routed by
our scoring router, fed from the API process's fair queue.

Each replica is a `BatchingEngine` in a Ray actor that streams a request's tokens back as they
are decoded. The API process keeps the per-capsule fair queues (`TierPool`) and lets a request
out only while the deployment has a free slot (running replicas x slots each); Ray Serve's
router, our `TrifectaRequestRouter`, then picks the replica. Autoscaling follows the ongoing
requests per replica: when the admitted load keeps replicas above `target_ongoing_requests`,
Serve adds replicas, the capacity grows, and more requests leave the fair queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.exceptions import RequestCancelledError
from ray.serve.schema import ReplicaState

from trifecta.cognitive.serving.model_source import ModelSource
from trifecta.cognitive.serving.ray_router import TrifectaRequestRouter
from trifecta.cognitive.serving.requests import (
    AsyncStreamSink,
    Completion,
    EngineRequest,
    ReplicaLoad,
    SamplingParams,
    StreamEvent,
)
from trifecta.core.errors import Unavailable
from trifecta.core.logging import get_logger

log = get_logger(__name__)
APP_PREFIX = "trifecta-tier-"
CAPACITY_POLL_S = 1.0


@dataclass(frozen=True)
class TierCall:
    """What the API process sends a replica: one request (the router reads `prompt_ids`)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


class TierReplica:
    """A Ray Serve replica of one tier: a continuous-batching engine in an actor."""

    def __init__(
        self, tier: str, source: dict[str, Any], max_batch: int, torch_threads: int | None
    ):
        from trifecta.cognitive.serving.codec import TokenCodec
        from trifecta.cognitive.serving.engine import BatchingEngine
        from trifecta.cognitive.serving.factory import set_torch_threads

        set_torch_threads(torch_threads)
        model, tokenizer = ModelSource.model_validate(source).load()
        replica = serve.get_replica_context().replica_id.unique_id
        self.engine = BatchingEngine(
            model, TokenCodec(tokenizer), name=f"{tier}-{replica}", max_batch=max_batch
        )

    async def generate(self, call: TierCall) -> AsyncIterator[list[Any] | Completion]:
        queue: asyncio.Queue[tuple[int, StreamEvent]] = asyncio.Queue()
        self.engine.submit(
            EngineRequest(
                call.prompt_ids, call.params, AsyncStreamSink(queue), request_id=call.request_id
            )
        )
        finished = False
        try:
            while not finished:
                _, event = await queue.get()
                if isinstance(event, BaseException):
                    raise event
                finished = isinstance(event, Completion)
                yield event
        finally:
            if not finished:  # the caller cancelled (its client went away): free the slot
                self.engine.cancel(call.request_id)

    def record_routing_stats(self) -> dict[str, int]:
        load = self.engine.load()
        return {"running": load.running, "waiting": load.waiting}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


@dataclass(frozen=True)
class RayTierOptions:
    min_replicas: int = 1
    max_replicas: int = 2
    max_batch: int = 16
    queue_depth: int = 2  # requests a replica may hold beyond its batch
    target_ongoing_requests: float | None = None  # default: three quarters of the batch
    num_cpus: float = 1.0
    torch_threads: int | None = 1
    router: dict[str, Any] = field(default_factory=dict)  # RouterWeights fields

    @property
    def slots(self) -> int:
        return self.max_batch + self.queue_depth


def deploy_tier(tier: str, source: ModelSource, options: RayTierOptions) -> Any:
    """Deploy (or update) tier `tier` as its own Serve application; returns its handle."""
    target = options.target_ongoing_requests or max(1.0, 0.75 * options.max_batch)
    router_config = RequestRouterConfig.model_validate(
        {
            "request_router_class": TrifectaRequestRouter,
            "request_router_kwargs": dict(options.router),
            "request_routing_stats_period_s": 1.0,
        }
    )
    deployment = serve.deployment(
        name=f"tier-{tier}",
        max_ongoing_requests=options.slots,
        autoscaling_config={
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": target,
            "upscale_delay_s": 2.0,
            "downscale_delay_s": 30.0,
            "metrics_interval_s": 1.0,
            "look_back_period_s": 5.0,
        },
        request_router_config=router_config,
        ray_actor_options={"num_cpus": options.num_cpus},
    )(TierReplica)
    app = deployment.bind(tier, source.model_dump(), options.max_batch, options.torch_threads)
    return serve.run(app, name=APP_PREFIX + tier, route_prefix=None)


def running_replicas(tier: str) -> int:
    status = serve.status().applications.get(APP_PREFIX + tier)
    if status is None:
        return 0
    deployment = status.deployments.get(f"tier-{tier}")
    if deployment is None:
        return 0
    return int(deployment.replica_states.get(ReplicaState.RUNNING, 0))


class RayReplicas:
    """The `Dispatcher` of a tier served by Ray Serve: requests go through the deployment
    handle (our router picks the replica), tokens stream back into the request's sink."""

    def __init__(self, tier: str, handle: Any, options: RayTierOptions):
        self.tier = tier
        self.handle = handle.options(stream=True)
        self.options = options
        self._replicas = max(1, running_replicas(tier))
        self._in_flight: dict[str, Any] = {}  # request id -> response generator (or None)
        self._lock = threading.Lock()
        self._wakeup: Callable[[], None] | None = None
        self._loop = asyncio.new_event_loop()
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"ray-{tier}", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._watch_capacity(), self._loop)

    def on_room(self, callback: Callable[[], None]) -> None:
        """Call `callback` when capacity grows (the tier scaled up)."""
        self._wakeup = callback

    def has_room(self) -> bool:
        with self._lock:
            return len(self._in_flight) < self._replicas * self.options.slots

    def slots(self) -> int:
        with self._lock:
            return self._replicas * self.options.max_batch

    def latency_slots(self, budget: float) -> int:
        # The replicas' step times stay inside the Ray workers; guarantees divide every slot.
        return self.slots()

    def loads(self) -> list[ReplicaLoad]:
        with self._lock:
            return [
                ReplicaLoad(self.tier, len(self._in_flight), 0, self._replicas * self.options.slots)
            ]

    def send(self, request: EngineRequest) -> None:
        with self._lock:
            self._in_flight[request.request_id] = None
        asyncio.run_coroutine_threadsafe(self._run(request), self._loop)

    async def _run(self, request: EngineRequest) -> None:
        call = TierCall(request.request_id, request.prompt_ids, request.params)
        finished = False
        try:
            stream = self.handle.generate.remote(call)
            with self._lock:
                cancelled = request.request_id not in self._in_flight  # cancelled before sending
                if not cancelled:
                    self._in_flight[request.request_id] = stream
            if cancelled:
                stream.cancel()
            async for event in stream:
                if isinstance(event, Completion):
                    finished = True
                    self._release(request.request_id)
                    request.sink.finish(event)
                else:
                    request.sink.tokens(event)
        except (asyncio.CancelledError, RequestCancelledError):
            if not finished:
                self._release(request.request_id)
                request.sink.finish(Completion("cancelled", len(request.prompt_ids), 0))
        except Exception as exc:
            if not finished:
                self._release(request.request_id)
                failure = (
                    exc
                    if not isinstance(exc, ray.exceptions.RayError)
                    else Unavailable(
                        f"tier {self.tier!r} on Ray Serve failed: {type(exc).__name__}"
                    )
                )
                request.sink.fail(failure)

    def _release(self, request_id: str) -> None:
        with self._lock:
            self._in_flight.pop(request_id, None)

    def cancel(self, request_id: str) -> None:
        """Stop a request; a request not sent yet is cancelled as soon as it is."""
        with self._lock:
            stream = self._in_flight.pop(request_id, None)
        if stream is not None:
            self._loop.call_soon_threadsafe(stream.cancel)

    async def _watch_capacity(self) -> None:
        while not self._closed.is_set():
            await asyncio.sleep(CAPACITY_POLL_S)
            try:
                replicas = await asyncio.to_thread(running_replicas, self.tier)
            except Exception as exc:  # the controller is busy or restarting: keep the old figure
                log.warning("cannot read the tier's replicas", tier=self.tier, error=repr(exc))
                continue
            with self._lock:
                grew = replicas > self._replicas
                self._replicas = max(1, replicas)
            if grew and self._wakeup is not None:
                self._wakeup()

    def close(self) -> None:
        self._closed.set()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
