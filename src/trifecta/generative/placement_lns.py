"""Large-neighbourhood search for the fewest expert moves to a max/mean target, on clusters
too large for the whole min-move MILP to improve on the greedy within its time limit.

The idea is Shaw's large-neighbourhood search (P. Shaw, 1998, "Using constraint programming
and local search methods to solve vehicle routing problems"): repeatedly free a small part
of the current answer and re-solve that part exactly. Here a neighbourhood is a few nodes
(the most and least loaded, the ones holding the most moved or the hottest experts, or a
random few); everything on the other nodes stays put, and `placement_milp.min_moves_floor`
re-places exactly the experts the chosen nodes hold or held before (putting one back is
free): an expert held only there may take any replica count, one also held elsewhere keeps
those replicas and may only gain replicas here (its weight on the other nodes can only
fall). The node capacity is the whole cluster's target x mean, so every accepted answer
keeps the target; an answer is kept only when it moves fewer experts, so the search never
moves more than its start. It stops when its CPU budget is spent, or once every neighbourhood of its
size was solved with no gain (a local minimum). Written by hand over the MILP: no library
does LNS over this program.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trifecta.generative.placement import Cluster, Loads, moves_between
from trifecta.generative.placement_milp import Budget, min_moves_floor

# 3 nodes: HiGHS proves most sub-problems at the strict level within a fraction of a second
# (4 were often cut by the sub-problem limit; 2 free too little). Measured on 64/8, 128/16.
NEIGHBOURHOOD_NODES = 3
SUB_TIME_LIMIT_S = 0.5  # one sub-problem's CPU seconds: a slow one is cut, not waited on
TOLERANCE = 1e-9  # relative slack on the capacity check (HiGHS's rows are feasible to ~1e-7)


@dataclass(frozen=True)
class LnsResult:
    """The best placement found, its moves, and how the search went."""

    placed: list[list[int]]
    moves: int
    start_moves: int
    rounds: int  # sub-problems solved
    improved: int  # of them, the ones that lowered the moves


def _node_loads(nodes: Sequence[Sequence[int]], loads: Loads) -> Loads:
    counts = np.bincount([e for n in nodes for e in n], minlength=loads.size)
    weight = loads / np.maximum(counts, 1)
    return np.array([weight[list(n)].sum() for n in nodes], dtype=np.float64)


def _neighbourhood(
    kind: int,
    nodes: list[list[int]],
    before: Sequence[set[int]],
    loads: Loads,
    slots: Sequence[int],
    size: int,
    rng: np.random.Generator,
) -> list[int]:
    """Nodes to free: most + least loaded (0), most moved (1), hottest experts' (2), random (3)."""
    count = len(nodes)
    usable = [n for n in range(count) if slots[n] > 0]
    node_load = _node_loads(nodes, loads)
    picked: list[int] = []
    if kind == 0:
        order = sorted(usable, key=lambda n: -node_load[n])
        heavy = int(rng.integers(2, 4))
        picked = order[:heavy] + order[::-1][: size - heavy]
    elif kind == 1:
        moved = np.array([len(set(nodes[n]) - before[n]) + 0.1 for n in usable])
        picked = list(
            rng.choice(usable, min(size, len(usable)), replace=False, p=moved / moved.sum())
        )
    elif kind == 2:
        counts = np.bincount([e for n in nodes for e in n], minlength=loads.size)
        hottest = np.argsort(-(loads / np.maximum(counts, 1)))[:8]
        hot = int(rng.choice(hottest))
        picked = [n for n in usable if hot in nodes[n]][:size]
    rest = [n for n in usable if n not in picked]
    if len(picked) < size and rest:
        picked += list(rng.choice(rest, min(size - len(picked), len(rest)), replace=False))
    return sorted({int(n) for n in picked})


def lns_min_moves(
    before: Sequence[set[int]],
    loads: Loads,
    cluster: Cluster,
    target: float,
    start: Sequence[Sequence[int]],
    time_limit_s: float | Budget,
    seed: int = 0,
    size: int = NEIGHBOURHOOD_NODES,
) -> LnsResult:
    """Lower the moves of `start` (a placement on `cluster` with max/mean <= `target`,
    moves counted from `before`) by re-solving neighbourhoods of `size` nodes exactly,
    until `time_limit_s` CPU seconds (or the `Budget`) are spent."""
    budget = Budget.of(time_limit_s)
    loads = np.asarray(loads, dtype=np.float64)
    capacity = target * loads.sum() / cluster.nodes
    current = [sorted(n) for n in start]
    best = start_moves = moves_between(before, current)
    rng = np.random.default_rng(seed)
    size = min(size, cluster.nodes)
    rounds = improved = draws = 0
    tried: set[tuple[int, ...]] = set()  # neighbourhoods already solved since the last gain
    every = math.comb(sum(1 for s in cluster.slots if s > 0), size)
    while best > 0 and budget.left() > 0.01:
        chosen = _neighbourhood(draws % 4, current, before, loads, cluster.slots, size, rng)
        draws += 1
        key = tuple(chosen)
        if key in tried or len(chosen) < size:
            if len(tried) >= every:  # every neighbourhood solved with no gain: a local minimum
                break
            continue
        tried.add(key)
        rounds += 1
        part = budget.part(SUB_TIME_LIMIT_S)
        found = _solve_part(before, loads, cluster, target, current, chosen, capacity, part)
        if found is None:
            continue
        moves = moves_between(before, found)
        within = _node_loads(found, loads).max() <= capacity * (1 + TOLERANCE)
        if moves < best and within:
            current, best = found, moves
            improved += 1
            tried.clear()
    return LnsResult(current, best, start_moves, rounds, improved)


def _solve_part(
    before: Sequence[set[int]],
    loads: Loads,
    cluster: Cluster,
    target: float,
    current: list[list[int]],
    chosen: list[int],
    capacity: float,
    budget: Budget,
) -> list[list[int]] | None:
    """`current` with the experts of the `chosen` nodes re-placed by the min-move MILP."""
    counts = np.bincount([e for n in current for e in n], minlength=loads.size)
    inside = np.bincount([e for n in chosen for e in current[n]], minlength=loads.size)
    # The experts held on the chosen nodes, and the ones they held before (putting one back
    # is free). An expert also held elsewhere keeps those replicas and may only gain
    # replicas here: its weight on the other nodes can only fall, so they stay in capacity.
    held_before = {e for n in chosen for e in before[n]}
    experts = sorted({int(e) for e in np.flatnonzero(inside)} | held_before)
    index = {e: i for i, e in enumerate(experts)}
    outside = [int(counts[e] - inside[e]) for e in experts]
    most = sum(1 for n in chosen if cluster.slots[n] > 0)
    options = [
        list(range(int(inside[e]) if out else 1, most + 1))
        for e, out in zip(experts, outside, strict=True)
    ]
    sub_before = [{index[e] for e in before[n] if e in index} for n in chosen]
    sub_start = [[index[e] for e in current[n]] for n in chosen]
    part = Cluster(slots=[cluster.slots[n] for n in chosen])
    floor = min_moves_floor(
        sub_before,
        loads[experts],
        part,
        target,
        budget,
        start=sub_start,
        replica_options=options,
        capacity=capacity,
        outside=outside,
    )
    if floor.placed is None:
        return None
    found = [list(n) for n in current]
    for position, n in enumerate(chosen):
        found[n] = sorted(experts[i] for i in floor.placed[position])
    return found
