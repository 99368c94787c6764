"""The fewest expert moves to a max/mean target for fixed replica counts, as a set
partitioning program over node configurations (column enumeration), solved with HiGHS.

Why: at a strict level (the from-scratch repack's own max/mean, about 1.001) the min-move
MILP of `placement_milp` describes a node's load by one knapsack row over binaries, whose
relaxation spreads replicas fractionally and proves little (bounds of 7-11 moves where 16 are
found); so HiGHS, given the whole cluster, rarely improves on the search, and the LNS frees
only three nodes at a time. Here a column is a whole node's content: the experts it held
before the rebalance, less at most `drops` of them, plus at most `adds` others (each a
move), kept only when its load lies in the window every node of a placement under the
target must lie in (at most the capacity, at least the total less every other node's
capacity). Choosing one column per node so that each expert gets exactly its replica count
is a set partitioning program, whose relaxation is far tighter than the knapsack's, and it
frees every node at once. Nodes that held nothing before (added nodes) have no such
neighbourhood: their content is one binary per expert, with the slot and window rows.

Replica counts are fixed (an expert's weight on a node is its load over its count): the
counts of a known placement under the target, which is also HiGHS's starting incumbent, so
the answer never moves more than it. Columns are enumerated with numpy: a node's drop sets
against its add sets, filtered by the window and its slots.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from trifecta.generative.placement import Cluster, Loads, moves_between
from trifecta.generative.placement_milp import Budget

if TYPE_CHECKING:
    import highspy
    from scipy.sparse import csc_array

ADDS = 2  # experts a held node may gain (each a move); the start's own columns are added
DROPS = 3  # experts a held node may give up (free)
MAX_COLUMNS = 60_000  # past this, one add fewer (HiGHS's root would eat the budget)
TOLERANCE = 1e-9  # relative slack on the window (HiGHS's rows are feasible to ~1e-7)


@dataclass(frozen=True)
class ColumnsResult:
    """The best placement found, its moves, and what HiGHS knew."""

    placed: list[list[int]]
    moves: int
    start_moves: int
    columns: int  # node configurations enumerated (0: the program was too large, not built)
    proven: bool  # the moves are the fewest for these replica counts and column limits


def _subsets(items: Sequence[int], most: int) -> list[tuple[int, ...]]:
    return [c for k in range(most + 1) for c in itertools.combinations(items, k)]


def _sums(subsets: Sequence[tuple[int, ...]], weight: Loads) -> Loads:
    return np.array([weight[list(s)].sum() for s in subsets], dtype=np.float64)


def _node_columns(
    held: Sequence[int],
    weight: Loads,
    slots: int,
    low: float,
    high: float,
    adds: int,
    drops: int,
) -> list[tuple[list[int], int]]:
    """(experts, moves) of every configuration of a held node in the window."""
    others = [e for e in range(weight.size) if e not in set(held)]
    drop_sets = _subsets(held, min(drops, len(held)))
    add_sets = _subsets(others, adds)
    base = float(weight[list(held)].sum())
    load = base - _sums(drop_sets, weight)[:, None] + _sums(add_sets, weight)[None, :]
    size = (
        len(held)
        - np.array([len(d) for d in drop_sets])[:, None]
        + np.array([len(a) for a in add_sets])[None, :]
    )
    ok = (load <= high) & (load >= low) & (size <= slots) & (size >= 0)
    out = []
    for i, j in zip(*np.nonzero(ok), strict=True):
        gone = set(drop_sets[i])
        out.append(([e for e in held if e not in gone] + list(add_sets[j]), len(add_sets[j])))
    return out


def _held_columns(
    before: Sequence[set[int]],
    current: list[list[int]],
    weight: Loads,
    cluster: Cluster,
    held_nodes: list[int],
    low: float,
    high: float,
    adds: int,
    drops: int,
) -> tuple[list[list[int]], list[float], list[float]] | None:
    """Every held node's columns (rows: its experts, then the node's row), their moves and
    the start's choice among them; None past `MAX_COLUMNS`."""
    experts = weight.size
    col_rows: list[list[int]] = []
    cost: list[float] = []
    start_vector: list[float] = []
    for n in held_nodes:
        found = _node_columns(sorted(before[n]), weight, cluster.slots[n], low, high, adds, drops)
        mine = set(current[n])
        if not any(set(cols) == mine for cols, _ in found):
            found.append((current[n], len(mine - before[n])))
        for cols, moved in found:
            col_rows.append([*sorted(cols), experts + n])
            cost.append(float(moved))
            start_vector.append(1.0 if set(cols) == mine else 0.0)
        if len(col_rows) > MAX_COLUMNS:
            return None
    return col_rows, cost, start_vector


def columns_min_moves(
    before: Sequence[set[int]],
    loads: Loads,
    cluster: Cluster,
    target: float,
    start: Sequence[Sequence[int]],
    time_limit_s: float | Budget,
    adds: int = ADDS,
    drops: int = DROPS,
) -> ColumnsResult:
    """Fewer moves than `start` (a placement on `cluster` under `target` max/mean, moves
    counted from `before`) with `start`'s replica counts, by the set partitioning program
    over node configurations, within `time_limit_s` CPU seconds (or the `Budget`)."""
    import highspy
    from scipy.sparse import csc_array

    budget = Budget.of(time_limit_s)
    loads = np.asarray(loads, dtype=np.float64)
    experts, nodes = loads.size, cluster.nodes
    current = [sorted(n) for n in start]
    start_moves = moves_between(before, current)
    counts = np.bincount([e for n in current for e in n], minlength=experts)
    weight = loads / np.maximum(counts, 1)
    high = target * loads.sum() / nodes
    low = loads.sum() - (nodes - 1) * high
    high, low = high * (1 + TOLERANCE), low * (1 - TOLERANCE)
    unchanged = ColumnsResult(current, start_moves, start_moves, 0, False)
    # Column j: rows are the experts it holds (coefficient 1) and its node's row.
    fresh = [n for n in range(nodes) if not before[n] and cluster.slots[n] > 0]
    held_nodes = [n for n in range(nodes) if n not in fresh and cluster.slots[n] > 0]
    # Fewer adds per node when the columns would pass the cap (128 experts: one add).
    for most in range(adds, -1, -1):
        enumerated = _held_columns(
            before, current, weight, cluster, held_nodes, low, high, most, drops
        )
        if enumerated is not None or budget.left() <= 0.05:
            break
    if enumerated is None or budget.left() <= 0.05:
        return unchanged
    col_rows, cost, start_vector = enumerated
    # Added nodes: one binary per expert (each a move), slots and window rows.
    window_rows = {n: experts + nodes + i for i, n in enumerate(fresh)}
    for n in fresh:
        for e in range(experts):
            col_rows.append([e, experts + n, window_rows[n]])
            cost.append(1.0)
            start_vector.append(1.0 if e in current[n] else 0.0)
    rows = experts + nodes + len(fresh)
    indices = np.concatenate([np.asarray(r, dtype=np.int32) for r in col_rows])
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in col_rows])]).astype(np.int32)
    data = np.ones(indices.size)
    # The window rows weigh each added node's experts.
    base = len(col_rows) - experts * len(fresh)
    for i, _ in enumerate(fresh):
        first = base + i * experts
        for e in range(experts):
            data[indptr[first + e] + 2] = weight[e]
    matrix = csc_array((data, indices, indptr), shape=(rows, len(col_rows)))
    row_lower = np.concatenate(
        [counts, [1.0 if n not in fresh and cluster.slots[n] > 0 else 0.0 for n in range(nodes)]]
    ).astype(np.float64)
    row_upper = row_lower.copy()
    for n in fresh:
        row_lower[experts + n], row_upper[experts + n] = 0.0, float(cluster.slots[n])
    row_lower = np.concatenate([row_lower, np.full(len(fresh), low)])
    row_upper = np.concatenate([row_upper, np.full(len(fresh), high)])
    costs = np.asarray(cost)
    given = np.asarray(start_vector, dtype=float)
    # The relaxation first (fast: one row per expert and node); reduced-cost fixing then drops
    # every column that no placement with fewer moves than the start can use, which leaves
    # HiGHS's branch and bound a small program (exact: nothing better is cut off).
    relaxed = _highs(matrix, costs, row_lower, row_upper, False, budget, None)
    kept = np.arange(len(col_rows))
    if relaxed.getModelStatus() == highspy.HighsModelStatus.kOptimal:
        bound = relaxed.getInfo().objective_function_value
        if bound > start_moves - 1 + 1e-6:  # no placement with these counts moves fewer
            return ColumnsResult(current, start_moves, start_moves, len(col_rows), True)
        reduced = np.asarray(relaxed.getSolution().col_dual)
        kept = np.flatnonzero((reduced <= start_moves - 1 - bound + 1e-6) | (given > 0.5))
    if budget.left() <= 0.05:
        return unchanged
    highs = _highs(matrix[:, kept], costs[kept], row_lower, row_upper, True, budget, given[kept])
    solution = highs.getSolution()
    if not solution.value_valid:
        return ColumnsResult(current, start_moves, start_moves, len(col_rows), False)
    chosen: NDArray[np.float64] = np.zeros(len(col_rows))
    chosen[kept] = np.asarray(solution.col_value)
    placed: list[list[int]] = [[] for _ in range(nodes)]
    for j in np.flatnonzero(chosen > 0.5):
        node_row = col_rows[j][1] if j >= base else col_rows[j][-1]
        if j >= base:
            placed[node_row - experts].append(col_rows[j][0])
        else:
            placed[node_row - experts] = sorted(col_rows[j][:-1])
    placed = [sorted(n) for n in placed]
    moves = moves_between(before, placed)
    proven = highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
    if moves >= start_moves or not _within(placed, loads, high, counts):
        return ColumnsResult(current, start_moves, start_moves, len(col_rows), proven)
    return ColumnsResult(placed, moves, start_moves, len(col_rows), proven)


def _highs(
    matrix: csc_array,
    cost: NDArray[np.float64],
    row_lower: NDArray[np.float64],
    row_upper: NDArray[np.float64],
    integer: bool,
    budget: Budget,
    start: NDArray[np.float64] | None,
) -> highspy.Highs:
    """HiGHS run on the program (binaries when `integer`, else its relaxation), from `start`."""
    import highspy

    from trifecta.fleet.program import _native_stdout_silenced

    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = matrix.shape[1], matrix.shape[0]
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(matrix.shape[1])
    lp.col_upper_ = np.ones(matrix.shape[1])
    lp.row_lower_ = row_lower
    lp.row_upper_ = row_upper
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = lp.num_col_, lp.num_row_
    lp.a_matrix_.start_ = matrix.indptr
    lp.a_matrix_.index_ = matrix.indices
    lp.a_matrix_.value_ = matrix.data
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * matrix.shape[1]
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("time_limit", max(budget.highs_limit(), 0.1))
    highs.setOptionValue("mip_rel_gap", 1e-6)
    # HiGHS's presolve probes every binary (minutes on 30,000 columns); the rows are few.
    highs.setOptionValue("presolve", "off")
    with _native_stdout_silenced():
        highs.passModel(lp)
        if start is not None:
            given = highspy.HighsSolution()
            given.col_value = start
            given.value_valid = True
            highs.setSolution(given)
        highs.run()
    return highs


def _within(placed: list[list[int]], loads: Loads, high: float, counts: NDArray[np.int64]) -> bool:
    """The answer keeps the counts, one replica per node and the capacity."""
    got = np.bincount([e for n in placed for e in n], minlength=loads.size)
    weight = loads / np.maximum(got, 1)
    fits = max(float(weight[n].sum()) for n in placed if n) <= high * (1 + 1e-7)
    return bool(np.array_equal(got, counts)) and fits
