"""The soak benchmark's `--hit-rates` probe: the hit rates caches of several sizes would have
on the task streams, for choosing a cache's bound from its hit rate rather than a guess.

- per-domain LRU caches keyed by the exact prompt (the context views' standing searches and
  bullet rankings, the query-embedding cache);
- the cognitive router's prefix index against the replicas' prefix KV caches it predicts:
  the real `ScoringRouter` and `PrefixKVCache` (with stand-in arrays for the keys/values)
  on a stream of task prompts, each index bound giving the share of prompts whose chosen
  replica had a cached prefix, and the share the index sent after a prefix the replica no
  longer held.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from rich.console import Console

from trifecta.cognitive.serving.prefix_cache import PrefixKVCache, block_hashes
from trifecta.cognitive.serving.requests import ReplicaLoad
from trifecta.cognitive.serving.router import ScoringRouter
from trifecta.core.tasks import iter_tasks


def lru_hit_rates(stream: list[str], caps: list[int], seen: int = 0) -> dict[int, float]:
    """The share of a query stream a least-recently-used cache of each size answers (the
    standing searches' policy), simulated per cap. With `seen` > 0, a query is kept only the
    second time it is asked within the last `seen` first asks (a doorkeeper: one-off queries
    then never push out repeated ones: the standing searches' policy since issue 16, at the
    `standing_searches_first_asks` setting's 1,024)."""
    rates = {}
    for cap in caps:
        kept: OrderedDict[str, None] = OrderedDict()
        once: OrderedDict[str, None] = OrderedDict()
        hits = 0
        for query in stream:
            if query in kept:
                hits += 1
                kept.move_to_end(query)
            elif seen and once.pop(query, 0) == 0:  # asked the first time: remembered only
                once[query] = None
                if len(once) > seen:
                    once.popitem(last=False)
            else:
                kept[query] = None
                if len(kept) > cap:
                    kept.popitem(last=False)
        rates[cap] = hits / len(stream)
    return rates


def print_hit_rates(console: Console, tasks: int) -> None:
    """How often a domain's task prompts recur within the last N of its queries: the hit
    rate a per-domain standing-search cache of N entries can have on the task streams."""
    from trifecta.core.tasks import iter_tasks

    caps = [16, 32, 64, 256, 1024, 4096]
    console.print(f"LRU hit rate per domain, {tasks} tasks: " + ", ".join(map(str, caps)))
    for split in ("train", "heldout"):
        for domain in (None, "energy"):
            stream = [t.prompt for _, t in zip(range(tasks), iter_tasks(seed=1, split=split, domain=domain), strict=False)]  # fmt: skip
            for seen in (0, 1024):
                rates = lru_hit_rates(stream, caps, seen)
                console.print(
                    f"{split} {domain}"
                    + (f", kept at a second ask within {seen}" if seen else "")
                    + ": "
                    + ", ".join(f"{100 * r:.2f}%" for r in rates.values())
                )


def router_hit_rates(
    prompts: list[str], bounds: list[int], replicas: int, cache_tokens: int
) -> dict[int, tuple[float, float]]:
    """(prefix-cache hit rate, stale-match rate) of a tier of `replicas` for each index bound.
    Token ids are the prompt's characters: the shipped tiers' tokenizer is character-level,
    so prefixes are equal exactly when the ids are."""
    names = [f"r{i}" for i in range(replicas)]
    loads = [ReplicaLoad(name, 0, 0, 8) for name in names]  # level loads: affinity decides
    rates = {}
    for bound in bounds:
        router = ScoringRouter(seed=0, index_hashes=bound)
        caches = {name: PrefixKVCache(capacity_tokens=cache_tokens) for name in names}
        hits = stale = 0
        for prompt in prompts:
            ids = [ord(c) for c in prompt]
            hashes = block_hashes(ids)
            matched = router.index.matched_blocks(hashes, names)
            name = router.choose(hashes, loads)
            _kv, length = caches[name].lookup(ids, hashes)
            hits += length > 0
            stale += matched[name] > 0 and length == 0
            stand_in = np.zeros((1, len(ids)), np.float32)  # the cache only stores it
            caches[name].insert(hashes, [stand_in], len(ids))  # type: ignore[list-item]
        rates[bound] = (hits / len(prompts), stale / len(prompts))
    return rates


def print_router_hit_rates(console: Console, tasks: int) -> None:
    """The router's prefix index at several bounds, on mixed held-out task prompts."""
    prompts = [t.prompt for _, t in zip(range(tasks), iter_tasks(seed=1, split="heldout"), strict=False)]  # fmt: skip
    for replicas, cache_tokens in ((2, 16_384), (2, 256)):
        fitted = replicas * cache_tokens // 8
        bounds = sorted({64, fitted, 4 * fitted, 100_000})
        rates = router_hit_rates(prompts, bounds, replicas, cache_tokens)
        console.print(
            f"router index, {replicas} replicas with {cache_tokens}-token prefix caches "
            f"(fitted bound {fitted}), {tasks} prompts: "
            + ", ".join(
                f"{bound}: hit {100 * hit:.2f}% stale {100 * stale:.2f}%"
                for bound, (hit, stale) in rates.items()
            )
        )


def print_loop_hit_rates(console: Console, requests: int) -> None:
    """Per-domain LRU hit rates on the loop benchmark's stream: the shipped fleet's capsules,
    a quarter of each capsule's requests one of its few standing queries (`workload.py`), the
    rest fresh held-out tasks. A domain's standing searches see every capsule of the domain."""
    from trifecta.fleet.fleetfile import load_fleet
    from trifecta.orchestrator.workload import build_workload

    capsules = load_fleet()
    domain_of = {c.id: c.domain for c in capsules}
    streams: dict[str, list[str]] = {}
    for item in build_workload(capsules, requests, seed=200):
        streams.setdefault(domain_of[item.capsule_id], []).append(item.task.prompt)
    caps = [16, 32, 64, 128, 256]
    for seen in (0, 1024):
        hits = dict.fromkeys(caps, 0.0)
        for stream in streams.values():
            for cap, rate in lru_hit_rates(stream, caps, seen).items():
                hits[cap] += rate * len(stream)
        console.print(
            f"loop stream, {requests} requests over {len(streams)} domains, LRU hit rate per "
            + (
                f"domain, kept at a second ask within {seen} (the default), at "
                if seen
                else "domain at "
            )
            + ", ".join(f"{cap}: {100 * hits[cap] / requests:.2f}%" for cap in caps)
        )
