"""Large-neighbourhood search over the min-move MILP: never more moves than its start, the
target kept, the time limit honoured, and `resize` (auto) using it on large clusters."""

from __future__ import annotations

import time

import numpy as np
import pytest

from trifecta.generative.expansion import resize
from trifecta.generative.placement import Cluster, from_scratch, moves_between, place
from trifecta.generative.placement_lns import lns_min_moves
from trifecta.generative.placement_milp import WALL_CAP

from .placement_cases import benchmark_first_trace


def zipf_loads(experts: int, exponent: float, seed: int, tokens: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, experts + 1) ** exponent
    loads = rng.multinomial(tokens, weights / weights.sum()).astype(np.float64)
    rng.shuffle(loads)
    return loads


def grown_instance(
    experts: int, nodes: int, seed: int
) -> tuple[list[set[int]], np.ndarray, Cluster, float, list[list[int]]]:
    """A placement meeting 15% more load on one more node, the greedy's answer at the
    repack's own max/mean (the strict level), and what the nodes held before."""
    loads = zipf_loads(experts, 1.0, seed)
    current = place(loads, Cluster.with_redundancy(nodes, experts, 0.10), method="greedy")
    grown = loads[np.random.default_rng(seed).permutation(experts)] * 1.15
    greedy = resize(current, grown, add=1, target=1.05, method="greedy")
    level = from_scratch(current, grown, greedy.placement.cluster).imbalance
    greedy = resize(current, grown, add=1, target=level, method="greedy")
    before = [set(n) for n in current.nodes] + [set()]
    level = max(level, greedy.imbalance)
    return before, grown, greedy.placement.cluster, level, greedy.placement.nodes


@pytest.mark.parametrize("seed", [3, 7])
def test_lns_never_moves_more_than_its_start_and_keeps_the_target(seed: int) -> None:
    before, loads, cluster, level, start = grown_instance(32, 6, seed)
    started, wall = time.process_time(), time.perf_counter()
    found = lns_min_moves(before, loads, cluster, level, start, time_limit_s=1.0)
    seconds, wall = time.process_time() - started, time.perf_counter() - wall
    assert found.start_moves == moves_between(before, start)
    assert found.moves <= found.start_moves
    assert found.moves == moves_between(before, found.placed)
    assert (found.improved > 0) == (found.moves < found.start_moves)
    counts = np.bincount([e for n in found.placed for e in n], minlength=loads.size)
    assert counts.min() >= 1 and all(len(set(n)) == len(n) for n in found.placed)
    assert all(len(n) <= s for n, s in zip(found.placed, cluster.slots, strict=True))
    weight = loads / counts
    node_loads = np.array([weight[n].sum() for n in found.placed])
    assert node_loads.max() / node_loads.mean() <= level + 1e-9
    assert seconds <= 1.0 + 1.0  # CPU seconds; slack: HiGHS's clock is wall time
    assert wall <= WALL_CAP * 1.0 + 1.5  # however loaded the machine


def test_lns_lowers_the_moves_where_the_greedy_overspends() -> None:
    """64 experts on 9 nodes at the strict level (the benchmark's first trace): the
    greedy's answer moves 17 experts, re-solving a few nodes at a time finds fewer (13 in
    5 s when this was written)."""
    case = benchmark_first_trace()
    found = lns_min_moves(
        case.before, case.loads, case.cluster, case.level, case.greedy, time_limit_s=3.0
    )
    assert found.start_moves == case.greedy_moves == 17
    assert found.moves < found.start_moves


def test_resize_auto_runs_the_lns_on_large_clusters_within_its_time_limit() -> None:
    loads = zipf_loads(64, 1.0, seed=5)
    current = place(loads, Cluster.with_redundancy(8, 64, 0.10), method="greedy")
    grown = loads * 1.15
    started = time.process_time()
    greedy = resize(current, grown, add=1, target=1.002, method="greedy")
    greedy_seconds = time.process_time() - started
    started = time.process_time()
    result = resize(current, grown, add=1, target=1.002, time_limit_s=2.0)
    seconds = time.process_time() - started
    # Too large for the whole MILP: the LNS, annealing, the node-content program, the LNS.
    assert "2 s time limit" in result.solver and "annealing and LNS" in result.solver
    assert result.moves <= greedy.moves
    assert result.placement.imbalance(grown) <= max(1.002, greedy.imbalance) + 1e-9
    assert seconds <= greedy_seconds + 2.0 + 1.0  # CPU: the greedy runs, the limit, slack
