"""Placement instances shared by the placement tests (annealing, LNS, removal)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trifecta.generative.expansion import resize
from trifecta.generative.placement import Cluster, from_scratch, place


@dataclass(frozen=True)
class StrictCase:
    """A placement meeting the next window on one more node, at the repack's own max/mean."""

    before: list[set[int]]  # what each node held before the rebalance (the new node: nothing)
    loads: np.ndarray
    cluster: Cluster  # the grown cluster
    level: float  # the repack's max/mean (or the greedy's, when it cannot reach it)
    greedy: list[list[int]]  # the greedy's answer at that level
    greedy_moves: int


def benchmark_first_trace() -> StrictCase:
    """The benchmark's first trace (64 experts, Zipf 0.8, 128k routed tokens, the next
    window 15% larger, one node added) at the repack's own max/mean; the greedy's answer
    there moves 17 experts."""
    rng = np.random.default_rng(1000)
    weights = 1.0 / np.arange(1, 65) ** 0.8
    share = weights[rng.permutation(64)] / weights.sum()
    window = rng.multinomial(131_072, share).astype(np.float64)
    following = rng.multinomial(int(131_072 * 1.15), share).astype(np.float64)
    current = place(window, Cluster.with_redundancy(8, 64, 0.10), method="greedy")
    grown = Cluster(slots=[*current.cluster.slots, max(current.cluster.slots)])
    level = from_scratch(current, following, grown).imbalance
    greedy = resize(current, following, add=1, target=level, method="greedy")
    before = [set(n) for n in current.nodes] + [set()]
    return StrictCase(
        before,
        following,
        grown,
        max(level, greedy.imbalance),
        greedy.placement.nodes,
        greedy.moves,
    )


def check_valid(placed: list[list[int]], loads: np.ndarray, cluster: Cluster, level: float) -> None:
    """Every expert placed, no node over its slots or holding an expert twice, the level kept."""
    counts = np.bincount([e for n in placed for e in n], minlength=loads.size)
    assert counts.min() >= 1
    assert all(len(set(n)) == len(n) <= s for n, s in zip(placed, cluster.slots, strict=True))
    node_loads = np.array([(loads / counts)[n].sum() for n in placed])
    assert node_loads.max() / node_loads.mean() <= level + 1e-9
