"""Exact placements with HiGHS (`scipy.optimize.milp`), for instances small enough that
an exact answer is cheap: the packing of given replica counts that minimises the heaviest
node (`placement.place` uses it for small instances), and the fewest expert moves to any
placement under a max/mean target (`expansion.resize` uses it for small instances, and the
benchmark measures the greedy rebalance against it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from trifecta.generative.placement import Cluster, Loads


# A search's budget is CPU seconds of this process, so what it finds does not depend on how
# many other jobs share the cores; the wall clock is capped at this multiple of the budget, so
# a machine loaded past it cuts the search instead of hanging it.
WALL_CAP = 3.0
# Until a budget has run this long, the CPU share it measures is too noisy to go by.
SHARE_AFTER_S = 0.2


@dataclass
class Budget:
    """CPU seconds of this process (`time.process_time`) with a wall-clock cap. HiGHS limits
    only wall time, so `highs_limit` converts CPU seconds at the share of a core this
    process has been getting (`parent`'s, for a part of a larger budget)."""

    cpu_s: float
    wall_cap_s: float
    parent: Budget | None = None
    cpu_start: float = field(default_factory=time.process_time)
    wall_start: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, limit: float | Budget) -> Budget:
        """A budget of `limit` CPU seconds (capped at `WALL_CAP` x it in wall time), or
        `limit` itself when it already is one."""
        if isinstance(limit, Budget):
            return limit
        return cls(limit, WALL_CAP * limit)

    def part(self, cpu_s: float) -> Budget:
        """A budget of at most `cpu_s` of the CPU left and the same share of the wall time
        left: on a loaded machine the wall cap then shortens every part alike, where a
        part capped only by the whole's wall time let the first parts starve the last."""
        left = self.left()
        cpu = min(cpu_s, left)
        return Budget(cpu, self.wall_left() * (cpu / left if left > 0 else 0.0), self)

    def cpu_spent(self) -> float:
        return time.process_time() - self.cpu_start

    def wall_spent(self) -> float:
        return time.perf_counter() - self.wall_start

    def wall_left(self) -> float:
        return self.wall_cap_s - self.wall_spent()

    def left(self) -> float:
        """CPU seconds left; 0 once the wall cap has passed."""
        return max(0.0, self.cpu_s - self.cpu_spent()) if self.wall_left() > 0 else 0.0

    def progress(self) -> float:
        """How far through the budget, 0 to 1: CPU spent, or wall time once it binds."""
        if self.cpu_s <= 0 or self.wall_cap_s <= 0:  # a part of a spent budget
            return 1.0
        return max(self.cpu_spent() / self.cpu_s, self.wall_spent() / self.wall_cap_s)

    def share(self) -> float:
        """CPU seconds this process got per wall second (1.0 until measured)."""
        top = self
        while top.parent is not None and top.wall_spent() < SHARE_AFTER_S:
            top = top.parent
        wall = top.wall_spent()
        if wall < SHARE_AFTER_S:
            return 1.0
        return min(1.0, max(top.cpu_spent() / wall, 0.05))

    def highs_limit(self, cpu_s: float | None = None) -> float:
        """Wall seconds to give HiGHS for `cpu_s` (default: all that is left) of CPU."""
        cpu = self.left() if cpu_s is None else min(cpu_s, self.left())
        return max(0.0, min(cpu / self.share(), self.wall_left()))


def _moves(before: Sequence[set[int]], after: Sequence[Sequence[int]]) -> int:
    return sum(len(set(experts) - before[n]) for n, experts in enumerate(after))


def milp_pack(
    loads: Loads, counts: NDArray[np.int64], cluster: Cluster, time_limit_s: float
) -> list[list[int]] | None:
    """Exact packing for fixed replica counts with HiGHS; None when it finds no solution in time.

    Variables x[e, n] in {0, 1} (replica of e on n) and T; minimise T subject to
    sum_n x[e, n] = counts[e], sum_e x[e, n] <= slots[n], sum_e w[e] x[e, n] <= T."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_array

    experts, nodes = loads.size, cluster.nodes
    weight = loads / counts
    size = experts * nodes + 1  # x flattened e-major, then T
    rows = lil_array((experts + 2 * nodes, size))
    for e in range(experts):
        rows[e, e * nodes : (e + 1) * nodes] = 1
    for n in range(nodes):
        rows[experts + n, n : experts * nodes : nodes] = 1
        rows[experts + nodes + n, n : experts * nodes : nodes] = weight
        rows[experts + nodes + n, size - 1] = -1
    lower = np.concatenate([counts, np.zeros(nodes), np.full(nodes, -np.inf)])
    upper = np.concatenate([counts, cluster.slots, np.zeros(nodes)])
    cost = np.zeros(size)
    cost[-1] = 1.0
    integrality = np.ones(size)
    integrality[-1] = 0
    result = milp(
        cost,
        constraints=LinearConstraint(rows.tocsr(), lower, upper),
        integrality=integrality,
        bounds=Bounds(np.zeros(size), np.concatenate([np.ones(size - 1), [np.inf]])),
        options={"time_limit": time_limit_s},
    )
    if result.x is None:
        return None
    x = np.round(result.x[:-1]).reshape(experts, nodes)
    return [np.flatnonzero(x[:, n]).tolist() for n in range(nodes)]


@dataclass(frozen=True)
class MoveFloor:
    """What HiGHS knows about the fewest moves to a max/mean target."""

    moves: int | None  # the best placement found (None: none found in time, or none exists)
    lower_bound: float  # no placement under the target moves fewer experts than this
    proven: bool  # the best found is the minimum (HiGHS closed the gap), or none exists
    placed: list[list[int]] | None
    timed_out: bool = False  # the time limit stopped HiGHS before it proved its answer


def exact_min_moves(
    before: Sequence[set[int]],
    loads: Loads,
    cluster: Cluster,
    target: float,
    time_limit_s: float | Budget,
) -> tuple[list[list[int]], int] | None:
    """The fewest moves found by `min_moves_floor` within the time limit, and their placement."""
    floor = min_moves_floor(before, loads, cluster, target, time_limit_s)
    if floor.placed is None or floor.moves is None:
        return None
    return floor.placed, floor.moves


def min_moves_floor(
    before: Sequence[set[int]],
    loads: Loads,
    cluster: Cluster,
    target: float,
    time_limit_s: float | Budget,
    start: Sequence[Sequence[int]] | None = None,
    replica_options: Sequence[Sequence[int]] | None = None,
    capacity: float | None = None,
    outside: Sequence[int] | None = None,
) -> MoveFloor:
    """The fewest moves from `before` (one set per node of `cluster`) to any placement with
    max/mean <= `target`, solved with HiGHS: the best placement found, the proven lower
    bound, and whether they meet, within `time_limit_s` CPU seconds (or a `Budget`). Exact
    but only cheap for small instances: the reference the greedy rebalance is measured
    against, and `resize`'s answer when small.

    y[e, k] (e has k replicas) and z[e, n, k] (e has k replicas, one on n, weighing
    load[e] / k there), sum_n z[e, n, k] = k y[e, k]; each node's sum of load[e] / k * z
    <= target x mean. No big-M: the relaxation is tight enough for HiGHS to prove small
    instances in seconds.

    `start`: a placement under the target; HiGHS starts from it (highspy: scipy's `milp`
    takes no start), so the answer never moves more than it, and a run stopped by the time
    limit still returns it. `replica_options`: the replica counts each expert may take (all
    by default); fewer options make a smaller, restricted program whose answer is a
    placement but whose bound is no floor for the unrestricted problem. `capacity`: the
    most load a node may carry (default `target` x the mean node load); a sub-problem over
    some nodes (`placement_lns`) passes the whole cluster's. `outside`: replicas each expert
    keeps on nodes outside the program (they stay); a replica then weighs load / (outside +
    k), and an expert held outside may take k = 0 here."""
    from trifecta.fleet.program import Program

    budget = Budget.of(time_limit_s)
    loads = np.asarray(loads, dtype=np.float64)
    experts, nodes = loads.size, cluster.nodes
    most = sum(1 for s in cluster.slots if s > 0)
    every = list(range(1, most + 1))
    kept = np.zeros(experts, dtype=np.int64) if outside is None else np.asarray(outside)
    # An option outside 1..most (an expert a removed node held alone had 0) is no option;
    # 0 is one for an expert with replicas outside the program.
    options = [
        sorted({k for k in o if int(kept[e] == 0) <= k <= most}) or every
        for e, o in enumerate(replica_options or [])
    ]
    allowed = options or [every] * experts
    start_counts = None
    if start is not None:
        start_counts = np.zeros(experts, dtype=np.int64)
        for held in start:
            start_counts[list(held)] += 1
        allowed = [sorted({*a, int(c)}) for a, c in zip(allowed, start_counts, strict=True)]
    program = Program()
    # z[e, n, k] = 1: e has k replicas and one of them is on n (it weighs load[e] / k there).
    # Summing z over k gives "e on n"; sum_n z[e, n, k] = k y[e, k] ties it to the count.
    z = [
        [
            {k: program.column(0.0 if e in before[n] else 1.0, 0, 1, integer=True) for k in ks}
            for n in range(nodes)
        ]
        for e, ks in enumerate(allowed)
    ]
    y = [{k: program.column(0.0, 0, 1, integer=True) for k in ks} for ks in allowed]
    for e, ks in enumerate(allowed):
        program.row([(y[e][k], 1.0) for k in ks], 1, 1)
        for k in ks:
            program.row([(z[e][n][k], 1.0) for n in range(nodes)] + [(y[e][k], -k)], 0, 0)
            for n in range(nodes):  # redundant for integers, tightens the relaxation
                program.row([(z[e][n][k], 1.0), (y[e][k], -1.0)], -np.inf, 0)
        for n in range(nodes):  # one replica per node
            program.row([(z[e][n][k], 1.0) for k in ks], 0, 1)
    if capacity is None:
        capacity = target * loads.sum() / nodes
    for n in range(nodes):
        on = [(z[e][n][k], 1.0) for e, ks in enumerate(allowed) for k in ks]
        program.row(on, 0, cluster.slots[n])
        terms = [(z[e][n][k], loads[e] / (kept[e] + k)) for e, ks in enumerate(allowed) for k in ks]
        program.row(terms, -np.inf, capacity)
    left = budget.highs_limit()  # building the program counts against the budget
    if start is None:
        result = program.solve(time_limit=left, mip_rel_gap=1e-6)
    else:
        assert start_counts is not None
        vector = np.zeros(len(program.cost))
        for n, held in enumerate(start):
            for e in held:
                vector[z[e][n][int(start_counts[e])]] = 1.0
        for e in range(experts):
            vector[y[e][int(start_counts[e])]] = 1.0
        result = program.solve_from(vector, time_limit=left, mip_rel_gap=1e-6)
    # HiGHS's dual bound: the floor it proved, even when the time limit stopped it early
    bound = getattr(result, "mip_dual_bound", None)
    lower = float(bound) if bound is not None and np.isfinite(bound) else 0.0
    if result.x is None:
        infeasible = result.status == 2  # proven: no placement reaches the target at all
        return MoveFloor(None, np.inf if infeasible else lower, infeasible, None, not infeasible)
    solution = np.asarray(result.x)
    placed = [
        [e for e, ks in enumerate(allowed) if sum(solution[z[e][n][k]] for k in ks) > 0.5]
        for n in range(nodes)
    ]
    moves = _moves(before, placed)
    optimal = result.status == 0
    return MoveFloor(moves, max(lower, 0.0), optimal, placed, not optimal)
