"""Simulated annealing over placements for the fewest moves under a max/mean level: the
move-aware search `expansion.resize` (auto) runs on clusters too large for the exact MILP.

A state is a placement (which experts each node holds); its cost is the moves counted from
the placement before the rebalance (a replica copied onto a node that did not hold it) plus
penalties for node load above the level's capacity and for spread (see the constants).
Each step proposes one change at random and accepts it by the Metropolis rule (Kirkpatrick
et al. 1983) under a temperature cooled geometrically over the time limit:
- drop a redundant replica (free; its expert's load spreads over its other holders),
- add a replica on a node with a free slot (free when the node held it before),
- move a replica to another node, swap two replicas between nodes,
- replace a redundant replica on a node by another expert.
Half the proposals take a replica off the most loaded node, and 60% are homeward: the
expert added is one the node held before, or the node a replica moves to held it before
(such a change costs no move or refunds one; drawn uniformly they are rare among 64-128
experts). Each cooling ends in a quench (cold, the overload penalty high), so it ends on
a placement that keeps the level. The best placement that keeps the level is returned.
Changes that alter an expert's replica count re-weigh every holder, which is why the
node loads are summed per step (from per-replica weights kept as counts change) rather
than patched. A rejected change is undone by its inverse (the
helpers `_replica`, `_swap`), the same code that applied it.

Written by hand, compiled with numba: no library anneals min-move placements with
replica-dependent loads, and the step loop must run some 10^5 times a second to matter
within a rebalance's few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit
from numpy.typing import NDArray

from trifecta.generative.placement import Cluster, Loads, moves_between
from trifecta.generative.placement_milp import Budget

# The cost of a step, in moves: PENALTY per unit of node load above the capacity (a unit is
# the level's slack, `anneal_min_moves`; raised over the run, so the search roams first and
# ends feasible), plus SHAPE x the sum of squared node deviations in those units (it steers
# toward balance, where the feasible placements are). Tuned on 12 development traces (64
# experts on 9 nodes, 128 on 17) at the repack's max/mean: colder runs (0.2 -> 0.02) did
# better at 64 experts and worse at 128; a flat penalty or no SHAPE found no feasible
# placement below the start.
START_PENALTY, END_PENALTY = 0.01, 10.0
START_TEMPERATURE, END_TEMPERATURE = 0.5, 0.05
SHAPE = 0.001
# Cooling runs per call, each after the first restarting from the best placement found:
# 3 lowered the summed moves over the 12 traces by 9% against one run (2 s, 2 seeds each).
CYCLES = 3
# Homeward proposals and the quench, measured on 16 development instances (64 and 128
# experts, expansion and removal at the repack's max/mean, 3M steps x 2 seeds): median
# moves / the repack's 0.272 with neither, 0.266 with the quench (the last 10%), 0.241 and
# 0.226 with 30% and 60% homeward (80%: 0.231; a quench of 20% or none: 0.228, 0.231 but
# one run at 117 moves where the walk ended infeasible).
QUENCH = 0.1
QUENCH_TEMPERATURE = 0.01
QUENCH_PENALTY = 1000.0
HOMEWARD = 0.6
STEPS_PER_CHUNK = 20_000  # steps between clock reads
TOLERANCE = 1e-9  # relative slack on the capacity check (as `placement_lns`)


@dataclass(frozen=True)
class AnnealResult:
    """The fewest-move placement found that keeps the level, and how the search went."""

    placed: list[list[int]]
    moves: int
    start_moves: int
    steps: int
    improved: bool


@njit(cache=True)
def _node_loads(
    lists: NDArray[np.int64],
    sizes: NDArray[np.int64],
    weight: NDArray[np.float64],
    out: NDArray[np.float64],
) -> None:
    for n in range(sizes.size):
        total = 0.0
        for i in range(sizes[n]):
            total += weight[lists[n, i]]
        out[n] = total


@njit(cache=True)
def _overload(load: NDArray[np.float64], cap: float, unit: float) -> float:
    total = 0.0
    for n in range(load.size):
        if load[n] > cap:
            total += load[n] - cap
    return total / unit


@njit(cache=True)
def _spread(load: NDArray[np.float64], unit: float) -> float:
    mean = load.mean()
    total = 0.0
    for n in range(load.size):
        total += ((load[n] - mean) / unit) ** 2
    return total


@njit(cache=True, inline="always")
def _take(
    lists: NDArray[np.int64], sizes: NDArray[np.int64], held: NDArray[np.bool_], n: int, e: int
) -> None:
    held[n, e] = False
    for i in range(sizes[n] - 1, -1, -1):  # from the end: an undo takes the last one put
        if lists[n, i] == e:
            lists[n, i] = lists[n, sizes[n] - 1]
            sizes[n] -= 1
            return


@njit(cache=True, inline="always")
def _put(
    lists: NDArray[np.int64], sizes: NDArray[np.int64], held: NDArray[np.bool_], n: int, e: int
) -> None:
    held[n, e] = True
    lists[n, sizes[n]] = e
    sizes[n] += 1


@njit(cache=True, inline="always")
def _replica(
    lists: NDArray[np.int64],
    sizes: NDArray[np.int64],
    held: NDArray[np.bool_],
    counts: NDArray[np.int64],
    loads: NDArray[np.float64],
    weight: NDArray[np.float64],
    n: int,
    e: int,
    add: bool,
) -> None:
    """A replica of e joins node n (`add`) or leaves it; each undoes the other. The
    expert's weight per replica follows its count."""
    if add:
        _put(lists, sizes, held, n, e)
        counts[e] += 1
    else:
        _take(lists, sizes, held, n, e)
        counts[e] -= 1
    weight[e] = loads[e] / counts[e]


@njit(cache=True, inline="always")
def _swap(
    lists: NDArray[np.int64],
    sizes: NDArray[np.int64],
    held: NDArray[np.bool_],
    n: int,
    a: int,
    m: int,
    b: int,
) -> None:
    """a leaves n for m and b (when >= 0) leaves m for n: a move when b < 0. Undone by
    `_swap(n, b, m, a)` (or `_swap(m, a, n, -1)` for a move)."""
    _take(lists, sizes, held, n, a)
    if b >= 0:
        _take(lists, sizes, held, m, b)
        _put(lists, sizes, held, n, b)
    _put(lists, sizes, held, m, a)


@njit(cache=True, inline="always")
def _joining(
    was_on: NDArray[np.int64], was_size: NDArray[np.int64], n: int, home: bool, experts: int
) -> int:
    """An expert to join node n: one it held before when `home`, else any."""
    if home and was_size[n] > 0:
        return int(was_on[n, np.random.randint(0, was_size[n])])
    return np.random.randint(0, experts)


@njit(cache=True)
def _anneal_chunk(
    lists: NDArray[np.int64],  # (N, max slots) experts per node, first sizes[n] valid
    sizes: NDArray[np.int64],  # (N,)
    held: NDArray[np.bool_],  # (N, E) held[n, e]: node n holds e now
    before: NDArray[np.bool_],  # (N, E) node n held e before the rebalance
    was_on: NDArray[np.int64],  # (N, E) the experts node n held before, first was_size[n]
    was_size: NDArray[np.int64],  # (N,)
    homes: NDArray[np.int64],  # (E, N) the nodes that held e before, first home_size[e]
    home_size: NDArray[np.int64],  # (E,)
    homeward: float,  # the share of proposals that send a replica back where it was
    counts: NDArray[np.int64],  # (E,) replicas per expert
    loads: NDArray[np.float64],  # (E,) tokens per expert
    slots: NDArray[np.int64],  # (N,)
    cap: float,
    unit: float,
    state: NDArray[np.float64],  # [moves, overload, spread] of the current placement
    best_lists: NDArray[np.int64],
    best_sizes: NDArray[np.int64],
    best: NDArray[np.float64],  # [fewest feasible moves found]
    penalty: float,
    temperature: float,
    steps: int,
    seed: int,
) -> None:
    np.random.seed(seed)
    nodes, experts = held.shape
    load = np.zeros(nodes)
    new_load = np.zeros(nodes)
    weight = loads / counts  # a replica's load, kept as replica counts change
    _node_loads(lists, sizes, weight, load)
    for _ in range(steps):
        h = int(np.argmax(load))
        kind = np.random.randint(0, 5)
        # n: the node a replica leaves (or joins, for add); m: the other node
        n = h if (kind != 1 and np.random.random() < 0.5) else np.random.randint(0, nodes)
        m = np.random.randint(0, nodes)
        a = -1  # the expert that leaves n
        b = -1  # the expert that joins n (add, replace) or leaves m (swap)
        delta = 0.0  # the change in moves
        if sizes[n] > 0:
            a = lists[n, np.random.randint(0, sizes[n])]
        # Homeward: the joining expert one n held before (add, replace), or the target a node
        # that held a before (move, swap); such a change costs no move, or refunds one.
        home = np.random.random() < homeward
        if home and (kind == 2 or kind == 3) and a >= 0 and home_size[a] > 0:
            m = homes[a, np.random.randint(0, home_size[a])]
        if kind == 0:  # drop a from n
            if a < 0 or counts[a] < 2:
                continue
            delta = -1.0 + before[n, a]
            _replica(lists, sizes, held, counts, loads, weight, n, a, False)
        elif kind == 1:  # add b on n
            b = _joining(was_on, was_size, n, home, experts)
            if held[n, b] or sizes[n] >= slots[n]:
                continue
            delta = 1.0 - before[n, b]
            _replica(lists, sizes, held, counts, loads, weight, n, b, True)
        elif kind == 2:  # move a from n to m
            if a < 0 or m == n or held[m, a] or sizes[m] >= slots[m]:
                continue
            delta = (1.0 - before[m, a]) - (1.0 - before[n, a])
            _swap(lists, sizes, held, n, a, m, -1)
        elif kind == 3:  # swap a (on n) with b (on m)
            if a < 0 or m == n or sizes[m] == 0 or held[m, a]:
                continue
            b = lists[m, np.random.randint(0, sizes[m])]
            if held[n, b]:
                continue
            delta = (1.0 - before[m, a]) + (1.0 - before[n, b])
            delta -= (1.0 - before[n, a]) + (1.0 - before[m, b])
            _swap(lists, sizes, held, n, a, m, b)
        else:  # replace a on n (a redundant replica) by b
            b = _joining(was_on, was_size, n, home, experts)
            if a < 0 or counts[a] < 2 or held[n, b]:
                continue
            delta = (1.0 - before[n, b]) - (1.0 - before[n, a])
            _replica(lists, sizes, held, counts, loads, weight, n, a, False)
            _replica(lists, sizes, held, counts, loads, weight, n, b, True)
        _node_loads(lists, sizes, weight, new_load)
        over = _overload(new_load, cap, unit)
        spread = _spread(new_load, unit)
        change = delta + penalty * (over - state[1]) + SHAPE * (spread - state[2])
        if change <= 0.0 or np.random.random() < math.exp(-change / temperature):
            state[0] += delta
            state[1] = over
            state[2] = spread
            load[:] = new_load
            if over <= TOLERANCE * cap / unit and state[0] < best[0]:
                best[0] = state[0]
                best_lists[:, :] = lists
                best_sizes[:] = sizes
            continue
        # Rejected: the inverse change.
        if kind == 0:
            _replica(lists, sizes, held, counts, loads, weight, n, a, True)
        elif kind == 1:
            _replica(lists, sizes, held, counts, loads, weight, n, b, False)
        elif kind == 2:
            _swap(lists, sizes, held, m, a, n, -1)
        elif kind == 3:
            _swap(lists, sizes, held, n, b, m, a)
        else:
            _replica(lists, sizes, held, counts, loads, weight, n, b, False)
            _replica(lists, sizes, held, counts, loads, weight, n, a, True)


def anneal_min_moves(
    before: Sequence[set[int]],
    loads: Loads,
    cluster: Cluster,
    level: float,
    start: Sequence[Sequence[int]],
    time_limit_s: float | Budget,
    seed: int = 0,
    cycles: int = CYCLES,
    max_steps: int | None = None,
    homeward: float | None = None,
) -> AnnealResult:
    """The fewest moves from `before` found by annealing from `start` (any placement on
    `cluster`; one that keeps `level` max/mean is never worsened) within `time_limit_s`
    CPU seconds (or the `Budget`), or within `max_steps` steps (the same answer every run,
    unless the budget stops it first)."""
    budget = Budget.of(time_limit_s)
    loads = np.asarray(loads, dtype=np.float64)
    nodes = cluster.nodes
    slots = np.asarray(cluster.slots, dtype=np.int64)
    was = np.zeros((nodes, loads.size), dtype=np.bool_)
    for n, experts_before in enumerate(before[:nodes]):
        was[n, list(experts_before)] = True
    history = _history(was)
    homeward = HOMEWARD if homeward is None else homeward
    mean = loads.sum() / nodes
    # Load is counted in units of the level's slack over the mean (a thousandth of the mean
    # at least): at 1.05 a node 1% over the mean is no cost worth a move, at 1.001 it is.
    # (A fixed thousandth cost 60 moves against 52 on 6 traces of 16 experts, both levels.)
    cap, unit = level * mean, max(level - 1.0, 1e-3) * mean
    start_moves = moves_between(before, start)
    walk = _Walk.of(start, loads, slots, before, cap, unit)
    feasible = walk.overload <= TOLERANCE * cap / unit
    best = np.array([float(start_moves) if feasible else np.inf])
    best_lists, best_sizes = walk.lists.copy(), walk.sizes.copy()
    steps = chunk = cycle = 0
    while (spent := budget.progress()) < 1.0:
        # The schedule follows the budget, or the step count when one is given (reproducible)
        progress = (spent if max_steps is None else steps / max_steps) * cycles
        if progress >= cycles:
            break
        if int(progress) > cycle and np.isfinite(best[0]):  # reheat from the best so far
            cycle = int(progress)
            found = [best_lists[n, : best_sizes[n]].tolist() for n in range(nodes)]
            walk = _Walk.of(found, loads, slots, before, cap, unit)
        progress -= int(progress)
        temperature = START_TEMPERATURE * (END_TEMPERATURE / START_TEMPERATURE) ** progress
        penalty = START_PENALTY * (END_PENALTY / START_PENALTY) ** progress
        if progress >= 1.0 - QUENCH:
            temperature, penalty = QUENCH_TEMPERATURE, QUENCH_PENALTY
        _anneal_chunk(
            walk.lists, walk.sizes, walk.held, was, *history, homeward, walk.counts, loads,
            slots, cap, unit,
            walk.state, best_lists, best_sizes, best, penalty, temperature, STEPS_PER_CHUNK,
            seed * 100_003 + chunk,
        )  # fmt: skip
        steps += STEPS_PER_CHUNK
        chunk += 1
    if not np.isfinite(best[0]):
        return AnnealResult([list(s) for s in start], start_moves, start_moves, steps, False)
    placed = [sorted(int(e) for e in best_lists[n, : best_sizes[n]]) for n in range(nodes)]
    moves = moves_between(before, placed)
    return AnnealResult(placed, moves, start_moves, steps, moves < start_moves or not feasible)


def _history(
    was: NDArray[np.bool_],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """`was` (node n held e before) as padded lists both ways: each node's experts, and
    each expert's nodes, with their lengths."""

    def padded(rows: NDArray[np.bool_]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        sizes = rows.sum(axis=1).astype(np.int64)
        out = np.zeros((rows.shape[0], max(int(sizes.max(initial=0)), 1)), dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : sizes[i]] = np.flatnonzero(row)
        return out, sizes

    return (*padded(was), *padded(was.T))


@dataclass
class _Walk:
    """The annealer's mutable placement: node lists, membership, replica counts, and its
    [moves, overload, spread] (the kernel updates all of them in place)."""

    lists: NDArray[np.int64]
    sizes: NDArray[np.int64]
    held: NDArray[np.bool_]
    counts: NDArray[np.int64]
    state: NDArray[np.float64]

    @property
    def overload(self) -> float:
        return float(self.state[1])

    @classmethod
    def of(
        cls,
        placed: Sequence[Sequence[int]],
        loads: Loads,
        slots: NDArray[np.int64],
        before: Sequence[set[int]],
        cap: float,
        unit: float,
    ) -> _Walk:
        nodes = slots.size
        lists = np.zeros((nodes, max(int(slots.max()), 1)), dtype=np.int64)
        sizes = np.zeros(nodes, dtype=np.int64)
        held = np.zeros((nodes, loads.size), dtype=np.bool_)
        for n, experts_on in enumerate(placed):
            lists[n, : len(experts_on)] = list(experts_on)
            sizes[n] = len(experts_on)
            held[n, list(experts_on)] = True
        counts = held.sum(axis=0).astype(np.int64)
        load = np.array([(loads / counts)[list(s)].sum() for s in placed])
        mean = loads.sum() / nodes
        state = np.array(
            [
                float(moves_between(before, placed)),
                float(np.maximum(load - cap, 0.0).sum() / unit),
                float((((load - mean) / unit) ** 2).sum()),
            ]
        )
        return cls(lists, sizes, held, counts, state)
