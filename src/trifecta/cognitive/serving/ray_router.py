"""Our scoring router as Ray Serve's request router for a tier deployment.

Ray Serve (2.40 and later) lets a deployment name a `RequestRouter` subclass that ranks the
replicas for each request; it runs inside every handle that calls the deployment. This one
feeds Ray's view of the replicas to the same `ScoringRouter` the in-process tier uses: the
queue length is Ray's count of ongoing requests at the replica, the running batch size is what
the replica reports through `record_routing_stats`, and prefix affinity reads the prompt's
block hashes from the request. The chosen replica is ranked first and the others after it
(best score first), so Ray falls back to them when the first has no room.
"""

from __future__ import annotations

from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from trifecta.cognitive.serving.prefix_cache import DEFAULT_BLOCK_SIZE, block_hashes
from trifecta.cognitive.serving.requests import ReplicaLoad
from trifecta.cognitive.serving.router import RouterWeights, ScoringRouter


def prompt_ids_of(pending: PendingRequest | None) -> list[int]:
    """The prompt token ids of a tier request (empty for anything else)."""
    if pending is None:
        return []
    for arg in pending.args:
        ids = getattr(arg, "prompt_ids", None)
        if ids is not None:
            return list(ids)
    return []


class TrifectaRequestRouter(FIFOMixin, RequestRouter):
    """Prefix affinity + queue length + running batch size, over a power-of-two-choices sample,
    with hot-prefix protection (see `router.py`)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self.block_size = int(kwargs.pop("block_size", DEFAULT_BLOCK_SIZE))
        self.scoring = ScoringRouter(RouterWeights(**kwargs))

    def _load(self, replica: RunningReplica) -> ReplicaLoad:
        ongoing = self.replica_queue_len_cache.get(replica.replica_id) or 0
        running = int((replica.routing_stats or {}).get("running", 0))
        running = min(running, ongoing) if ongoing else running
        return ReplicaLoad(
            replica.replica_id.unique_id,
            running,
            max(0, ongoing - running),
            max(1, replica.max_ongoing_requests),
        )

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_name = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = [self._load(r) for r in candidate_replicas]
        hashes = block_hashes(prompt_ids_of(pending_request), self.block_size)
        chosen = self.scoring.choose(hashes, loads)
        matched = self.scoring.index.matched_blocks(hashes, list(by_name))
        least = min(load.in_flight for load in loads)
        rest = sorted(
            (load for load in loads if load.name != chosen),
            key=lambda load: -self.scoring.score(load, matched[load.name], len(hashes), least),
        )
        return [[by_name[chosen]], [by_name[load.name] for load in rest]]

    def on_replica_actor_died(self, replica_id: Any) -> None:
        super().on_replica_actor_died(replica_id)
        self.scoring.index.forget(replica_id.unique_id)
