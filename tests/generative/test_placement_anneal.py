"""Simulated annealing for fewest moves: a valid placement that keeps the level, never more
moves than a feasible start, a feasible answer from an infeasible start, fewer moves than
the greedy where it overspends (`resize` running it on large clusters is tested with the
LNS, in test_placement_lns)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from trifecta.generative.expansion import resize
from trifecta.generative.placement import Cluster, moves_between, place
from trifecta.generative.placement_anneal import anneal_min_moves

from .placement_cases import benchmark_first_trace, check_valid

STEPS = 1_000_000  # some 0.3-1.5 s of annealing, as loaded as the machine is


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    """numba compiles the kernel on first use (cached on disk after): not in the timings."""
    loads = np.array([3.0, 2.0, 1.0, 1.0])
    anneal_min_moves([{0, 1}, {2, 3}], loads, Cluster.uniform(2, 3), 1.5, [[0, 1], [2, 3]], 0.01)


def test_annealing_lowers_the_greedy_moves_and_keeps_the_level() -> None:
    case = benchmark_first_trace()
    started = time.perf_counter()
    found = anneal_min_moves(
        case.before, case.loads, case.cluster, case.level, case.greedy, 30.0, max_steps=STEPS
    )
    seconds = time.perf_counter() - started
    assert found.start_moves == moves_between(case.before, case.greedy) == 17
    assert found.moves == moves_between(case.before, found.placed)
    assert found.moves < found.start_moves and found.improved  # 14 when written (17 at 500k)
    assert found.steps == STEPS
    check_valid(found.placed, case.loads, case.cluster, case.level)
    assert seconds < 30.0


def test_the_time_limit_is_honoured() -> None:
    case = benchmark_first_trace()
    started = time.process_time()
    found = anneal_min_moves(
        case.before, case.loads, case.cluster, case.level, case.greedy, time_limit_s=0.3
    )
    assert time.process_time() - started <= 0.3 + 0.2  # CPU seconds; one chunk past it
    assert found.moves <= found.start_moves


def test_an_infeasible_start_is_annealed_into_a_feasible_placement() -> None:
    """The placement before the rebalance, an empty node added: over 1.05, which the
    annealer must reach on its own."""
    case = benchmark_first_trace()
    start = [sorted(n) for n in case.before]
    found = anneal_min_moves(
        case.before, case.loads, case.cluster, 1.05, start, 30.0, max_steps=STEPS // 4
    )
    assert found.improved and found.moves > 0
    check_valid(found.placed, case.loads, case.cluster, 1.05)


def test_resize_search_runs_what_large_clusters_run_at_any_size() -> None:
    """`method="search"` (the greedy, annealing, the LNS; no whole-cluster MILP) on 16
    experts: never more moves than the greedy, the level kept, the answer named."""
    rng = np.random.default_rng(11)
    loads = rng.permutation(rng.multinomial(20_000, np.full(16, 1 / 16)) * np.arange(1, 17))
    loads = loads.astype(np.float64)
    current = place(loads, Cluster.with_redundancy(4, 16, 0.10), method="greedy")
    grown = loads * 1.15
    greedy = resize(current, grown, add=1, target=1.01, method="greedy")
    result = resize(current, grown, add=1, target=1.01, method="search", time_limit_s=0.5)
    assert result.moves <= greedy.moves
    assert result.placement.imbalance(grown) <= max(1.01, greedy.imbalance) + 1e-9
    assert "annealing and LNS" in result.solver
