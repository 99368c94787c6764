"""Routing: prefix affinity, load spreading, hot-prefix protection; and through real replicas."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.factory import build_engines
from trifecta.cognitive.serving.fair_queue import FairQueue
from trifecta.cognitive.serving.pool import LocalReplicas, TierPool
from trifecta.cognitive.serving.prefix_cache import block_hashes
from trifecta.cognitive.serving.requests import (
    CollectingSink,
    EngineRequest,
    ReplicaLoad,
    SamplingParams,
)
from trifecta.cognitive.serving.router import RouterWeights, ScoringRouter

REPLICAS = [f"r{i}" for i in range(4)]


class Cluster:
    """Replica loads as the router would read them, updated as requests are routed."""

    def __init__(self, max_batch: int = 16):
        self.in_flight = dict.fromkeys(REPLICAS, 0)
        self.max_batch = max_batch

    def loads(self) -> list[ReplicaLoad]:
        return [
            ReplicaLoad(name, min(n, self.max_batch), max(0, n - self.max_batch), self.max_batch)
            for name, n in self.in_flight.items()
        ]


def prompt_hashes(prefix: str, rng: random.Random) -> list[int]:
    text = prefix + "".join(rng.choice("0123456789") for _ in range(8))
    return block_hashes([ord(c) for c in text], 8)


def test_requests_sharing_a_prefix_land_where_it_was_seen() -> None:
    router = ScoringRouter(seed=1)
    cluster = Cluster()
    rng = random.Random(0)
    prefixes = [f"t={10 + i},p=17,r=63,s=5;" for i in range(6)]
    home: dict[str, set[str]] = {p: set() for p in prefixes}
    for round_ in range(30):
        for prefix in prefixes:
            chosen = router.choose(prompt_hashes(prefix, rng), cluster.loads())
            if round_ > 0:
                home[prefix].add(chosen)
    # Light, balanced load: each prefix stays on the one replica that first served it.
    assert all(len(replicas) == 1 for replicas in home.values())


def test_distinct_prompts_spread_evenly_over_the_replicas() -> None:
    router = ScoringRouter(seed=2)
    cluster = Cluster()
    rng = random.Random(1)
    for _ in range(200):
        chosen = router.choose(prompt_hashes(str(rng.random()), rng), cluster.loads())
        cluster.in_flight[chosen] += 1
    counts = cluster.in_flight.values()
    assert max(counts) - min(counts) <= 4  # power of two choices keeps the loads close


def test_a_hot_prefix_spills_over_instead_of_pinning_one_replica() -> None:
    weights = RouterWeights(imbalance_threshold=4)
    router = ScoringRouter(weights, seed=3)
    cluster = Cluster()
    rng = random.Random(2)
    owners: Counter[str] = Counter()
    for _ in range(120):  # one prompt prefix floods the tier, nothing completes meanwhile
        chosen = router.choose(prompt_hashes("t=41,p=17,r=63,s=5;", rng), cluster.loads())
        cluster.in_flight[chosen] += 1
        owners[chosen] += 1
    assert len(owners) == len(REPLICAS)
    assert (
        max(cluster.in_flight.values()) - min(cluster.in_flight.values())
        <= weights.imbalance_threshold + 2
    )


def test_real_replicas_reuse_the_prefix_they_cached(tiny: tuple[Any, Any], small_rate: Any) -> None:
    model, tokenizer = tiny
    codec = TokenCodec(tokenizer)
    engines = build_engines(model, codec, tier="small", replicas=3, max_batch=4)
    pool = TierPool(
        "small",
        LocalReplicas(engines, router=ScoringRouter(seed=4)),
        codec,
        context_length=64,
        queue=FairQueue(),
    )
    try:
        prompts = [f"t=41,p=17,r=63,s=5,u=8;{tail}?" for tail in ("t", "p", "r", "s", "u", "t+p")]
        served_by, cached = [], []
        for prompt in prompts:  # one after the other: the loads stay level
            sink = CollectingSink()
            pool.submit(EngineRequest(codec.encode(prompt), SamplingParams(max_new_tokens=2), sink))
            _, completion = sink.wait(timeout=30)
            served_by.append(completion.replica)
            cached.append(completion.cached_prompt_tokens)
        assert len(set(served_by)) == 1
        assert cached[0] == 0 and all(c >= 24 for c in cached[1:])
    finally:
        pool.close()
