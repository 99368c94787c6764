"""Exact placements with HiGHS (`scipy.optimize.milp`), for instances small enough that
an exact answer is cheap: the packing of given replica counts that minimises the heaviest
node (`placement.place` uses it for small instances), and the fewest expert moves to any
placement under a max/mean target (`expansion.resize` uses it for small instances, and the
benchmark measures the greedy rebalance against it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from trifecta.generative.placement import Cluster, Loads


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
    proven: bool  # the best found is the minimum (HiGHS closed the gap)
    placed: list[list[int]] | None


def exact_min_moves(
    before: Sequence[set[int]], loads: Loads, cluster: Cluster, target: float, time_limit_s: float
) -> tuple[list[list[int]], int] | None:
    """The fewest moves found by `min_moves_floor` within the time limit, and their placement."""
    floor = min_moves_floor(before, loads, cluster, target, time_limit_s)
    if floor.placed is None or floor.moves is None:
        return None
    return floor.placed, floor.moves


def min_moves_floor(
    before: Sequence[set[int]], loads: Loads, cluster: Cluster, target: float, time_limit_s: float
) -> MoveFloor:
    """The fewest moves from `before` (one set per node of `cluster`) to any placement with
    max/mean <= `target`, replica counts free, solved with HiGHS (`scipy.optimize.milp`):
    the best placement found, the proven lower bound, and whether they meet. Exact but only
    cheap for small instances: the reference the greedy rebalance is measured against.

    x[e, n] (replica of e on n), y[e, k] (e has k replicas), z[e, n, k] >= x + y - 1 (the
    replica on n weighs load[e] / k); each node's sum of load[e] / k * z <= target x mean."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    loads = np.asarray(loads, dtype=np.float64)
    experts, nodes = loads.size, cluster.nodes
    most = sum(1 for s in cluster.slots if s > 0)
    nx, ny = experts * nodes, experts * most
    x = np.arange(nx).reshape(experts, nodes)
    y = nx + np.arange(ny).reshape(experts, most)  # column k-1: k replicas
    z = nx + ny + np.arange(nx * most).reshape(experts, nodes, most)
    rows: list[tuple[list[int], list[float], float, float]] = []  # (columns, values, lo, hi)
    for e in range(experts):
        rows.append((list(y[e]), [1.0] * most, 1, 1))
        rows.append(
            (list(x[e]) + list(y[e]), [1.0] * nodes + [-k for k in range(1, most + 1)], 0, 0)
        )
    for n in range(nodes):
        rows.append((list(x[:, n]), [1.0] * experts, 0, cluster.slots[n]))
        weights = (loads[:, None] / np.arange(1, most + 1)).ravel()
        rows.append(
            (list(z[:, n, :].ravel()), list(weights), -np.inf, target * loads.sum() / nodes)
        )
    for e in range(experts):
        for n in range(nodes):
            for k in range(most):
                rows.append(([x[e, n], y[e, k], z[e, n, k]], [1.0, 1.0, -1.0], -np.inf, 1))
    r = [i for i, (cols, _, _, _) in enumerate(rows) for _ in cols]
    c = [col for cols, _, _, _ in rows for col in cols]
    v = [val for _, vals, _, _ in rows for val in vals]
    size = nx + ny + nx * most
    matrix = coo_array((v, (r, c)), shape=(len(rows), size)).tocsr()
    cost = np.zeros(size)
    cost[:nx] = [0.0 if e in before[n] else 1.0 for e in range(experts) for n in range(nodes)]
    integrality = np.concatenate([np.ones(nx + ny), np.zeros(nx * most)])
    result = milp(
        cost,
        constraints=LinearConstraint(matrix, [lo for *_, lo, _ in rows], [hi for *_, hi in rows]),
        integrality=integrality,
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit_s},
    )
    # HiGHS's dual bound: the floor it proved, even when the time limit stopped it early
    bound = getattr(result, "mip_dual_bound", None)
    lower = float(bound) if bound is not None and np.isfinite(bound) else 0.0
    if result.x is None:
        infeasible = result.status == 2  # proven: no placement reaches the target at all
        return MoveFloor(None, np.inf if infeasible else lower, infeasible, None)
    chosen = np.round(result.x[:nx]).reshape(experts, nodes)
    placed = [np.flatnonzero(chosen[:, n]).tolist() for n in range(nodes)]
    moves = _moves(before, placed)
    return MoveFloor(moves, max(lower, 0.0), result.status == 0, placed)
