"""The router's prefix index is bounded (issue 16): by what the tier's replicas' prefix
caches can hold, or by the `router_prefix_hashes` setting; least recently routed first out.
It was a fixed 100,000 hashes (about 33 MB a tier) whatever the caches held."""

from __future__ import annotations

import random
from typing import Any

import pytest

from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.factory import build_engines
from trifecta.cognitive.serving.pool import LocalReplicas
from trifecta.cognitive.serving.prefix_cache import block_hashes
from trifecta.cognitive.serving.requests import ReplicaLoad
from trifecta.cognitive.serving.router import PrefixIndex, ScoringRouter
from trifecta.core.heap_report import tracked_sizes


def prompts(count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100) for _ in range(40)] for _ in range(count)]


def test_the_index_keeps_its_bound_and_drops_the_least_recently_routed() -> None:
    index = PrefixIndex(capacity=20)
    first, *rest = [block_hashes(ids) for ids in prompts(30, seed=1)]  # 5 blocks each
    index.record(first, "r0")
    for hashes in rest:
        index.record(hashes, "r1")
        assert index.entries <= 20
    assert index.entries == 20
    assert index.matched_blocks(first, ["r0"]) == {"r0": 0}  # the oldest went first
    assert index.matched_blocks(rest[-1], ["r1"]) == {"r1": 5}  # the newest is kept
    index.resize(5)
    assert index.entries == 5 and index.matched_blocks(rest[-1], ["r1"]) == {"r1": 5}


def test_a_router_reads_its_bound_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIFECTA_COGNITIVE_ROUTER_PREFIX_HASHES", "12")
    router = ScoringRouter(seed=0)
    router.fit_index(10_000)  # a configured bound is kept
    loads = [ReplicaLoad("r0", 0, 0, 4), ReplicaLoad("r1", 0, 0, 4)]
    for ids in prompts(50, seed=2):
        router.choose(block_hashes(ids), loads)
    assert router.index.bound == 12 and router.index.entries == 12
    sizes = tracked_sizes()["cognitive router prefix index (hashes)"]
    assert sizes["entries"] <= sizes["bound"]


def test_a_tier_sizes_its_index_by_its_replicas_caches(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRIFECTA_COGNITIVE_ROUTER_PREFIX_HASHES", raising=False)
    model, tokenizer = tiny
    engines = build_engines(
        model, TokenCodec(tokenizer), tier="small", replicas=3, prefix_cache_tokens=256
    )
    replicas = LocalReplicas(engines, router=ScoringRouter(seed=3))
    try:
        assert replicas.router.index.bound == 3 * 256 // 8  # every block the caches can hold
    finally:
        for engine in engines:
            engine.close()
