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
# Experts whose replica count the program may change by one (`count_options`): the
# replicated ones and the heaviest single ones, at most this many, heaviest first. Past
# `MAX_COLUMNS` fewer of them (`VARY_FEWER`), then none, before one add fewer.
VARY_MOST = 10
VARY_FEWER = 4
VARY_SINGLES = 3


@dataclass(frozen=True)
class ColumnsResult:
    """The best placement found, its moves, and what HiGHS knew."""

    placed: list[list[int]]
    moves: int
    start_moves: int
    columns: int  # node configurations enumerated (0: the program was too large, not built)
    proven: bool  # the moves are the fewest for these replica counts and column limits


def count_options(
    loads: Loads, counts: NDArray[np.int64], most: int, vary: int = VARY_MOST
) -> list[list[int]]:
    """Replica counts each expert may take: its count, and one more or fewer (within 1 and
    `most` nodes) for the `vary` experts carrying the most load among the replicated ones
    and the `VARY_SINGLES` heaviest single ones (the hot experts, whose counts set how
    the load splits; a light expert's extra replica only multiplies the columns)."""
    replicated = [int(e) for e in np.argsort(-loads, kind="stable") if counts[e] >= 2]
    singles = [int(e) for e in np.argsort(-loads, kind="stable") if counts[e] == 1]
    options = [[int(c)] for c in counts]
    for e in sorted(replicated + singles[:VARY_SINGLES], key=lambda e: -loads[e])[:vary]:
        c = int(counts[e])
        options[e] = [k for k in (c - 1, c, c + 1) if 1 <= k <= most]
    return options


def _subsets(items: Sequence[int], most: int) -> list[tuple[int, ...]]:
    return [c for k in range(most + 1) for c in itertools.combinations(items, k)]


def _sums(subsets: Sequence[Sequence[int]], weight: Loads) -> Loads:
    return np.array([weight[list(s)].sum() for s in subsets], dtype=np.float64)


# A column: the node, its (expert, replica count) items, its moves.
Column = tuple[int, tuple[tuple[int, int], ...], int]


def _node_columns(
    node: int,
    held: Sequence[int],
    loads: Loads,
    options: Sequence[Sequence[int]],
    slots: int,
    low: float,
    high: float,
    adds: int,
    drops: int,
) -> list[Column]:
    """Every configuration of a held node in the window: its old experts less a drop set
    plus an add set, each expert at one of its replica counts (a replica weighs load / k)."""
    held_set = set(held)
    variable = [e for e in held if len(options[e]) > 1]
    # The add sets, over (expert, count) items, at most one item per expert.
    items = [(e, k) for e in range(loads.size) if e not in held_set for k in options[e]]
    add_sets = [
        a
        for m in range(adds + 1)
        for a in itertools.combinations(items, m)
        if len({e for e, _ in a}) == m
    ]
    add_load = np.array([sum(loads[e] / k for e, k in a) for a in add_sets], dtype=np.float64)
    add_size = np.array([len(a) for a in add_sets])
    drop_sets = _subsets(held, min(drops, len(held)))
    drop_size = np.array([len(d) for d in drop_sets])
    size_ok = (len(held) - drop_size[:, None] + add_size[None, :] <= slots) & (
        len(held) - drop_size[:, None] + add_size[None, :] >= 0
    )
    out: list[Column] = []
    # Each count of the held variable experts gives the held experts' weights; a dropped
    # variable expert is counted once (at its first option), so no column repeats.
    for chosen in itertools.product(*(options[e] for e in variable)):
        count = dict(zip(variable, chosen, strict=True))
        weight = np.array(
            [loads[e] / count.get(e, options[e][0]) for e in range(loads.size)], dtype=np.float64
        )
        first = [all(count.get(e, options[e][0]) == options[e][0] for e in d) for d in drop_sets]
        load = float(weight[list(held)].sum()) - _sums(drop_sets, weight)[:, None] + add_load
        ok = (load <= high) & (load >= low) & size_ok & np.asarray(first)[:, None]
        for i, j in zip(*np.nonzero(ok), strict=True):
            gone = set(drop_sets[i])
            kept = tuple((e, count.get(e, options[e][0])) for e in held if e not in gone)
            out.append((node, tuple(sorted(kept + add_sets[j])), len(add_sets[j])))
    return out


def _held_columns(
    before: Sequence[set[int]],
    current: list[list[int]],
    loads: Loads,
    options: Sequence[Sequence[int]],
    counts: NDArray[np.int64],
    cluster: Cluster,
    held_nodes: list[int],
    low: float,
    high: float,
    adds: int,
    drops: int,
) -> list[Column] | None:
    """Every held node's columns, the start's own among them; None past `MAX_COLUMNS`."""
    columns: list[Column] = []
    for n in held_nodes:
        found = _node_columns(
            n, sorted(before[n]), loads, options, cluster.slots[n], low, high, adds, drops
        )
        mine = tuple(sorted((e, int(counts[e])) for e in current[n]))
        if not any(items == mine for _, items, _ in found):
            found.append((n, mine, len(set(current[n]) - before[n])))
        columns += found
        if len(columns) > MAX_COLUMNS:
            return None
    return columns


def columns_min_moves(
    before: Sequence[set[int]],
    loads: Loads,
    cluster: Cluster,
    target: float,
    start: Sequence[Sequence[int]],
    time_limit_s: float | Budget,
    adds: int = ADDS,
    drops: int = DROPS,
    vary: int = 0,
) -> ColumnsResult:
    """Fewer moves than `start` (a placement on `cluster` under `target` max/mean, moves
    counted from `before`) by the set partitioning program over node configurations,
    within `time_limit_s` CPU seconds (or the `Budget`). `vary`: how many of the hot
    experts may take a replica count one more or fewer than `start`'s (`count_options`);
    0: `start`'s counts, fixed."""
    import highspy
    from scipy.sparse import csc_array

    budget = Budget.of(time_limit_s)
    loads = np.asarray(loads, dtype=np.float64)
    experts, nodes = loads.size, cluster.nodes
    current = [sorted(n) for n in start]
    start_moves = moves_between(before, current)
    counts = np.bincount([e for n in current for e in n], minlength=experts)
    high = target * loads.sum() / nodes
    low = loads.sum() - (nodes - 1) * high
    high, low = high * (1 + TOLERANCE), low * (1 - TOLERANCE)
    unchanged = ColumnsResult(current, start_moves, start_moves, 0, False)
    fresh = [n for n in range(nodes) if not before[n] and cluster.slots[n] > 0]
    held_nodes = [n for n in range(nodes) if n not in fresh and cluster.slots[n] > 0]
    # Past the cap on columns, fewer experts with a free count, then one add fewer.
    usable = sum(1 for s in cluster.slots if s > 0)
    ladder = [
        (a, v) for a in range(adds, -1, -1) for v in sorted({vary, min(vary, VARY_FEWER), 0})[::-1]
    ]
    for most, free in ladder:
        choices = count_options(loads, counts, usable, free)
        enumerated = _held_columns(
            before, current, loads, choices, counts, cluster, held_nodes, low, high, most, drops
        )
        if enumerated is not None or budget.left() <= 0.05:
            break
    if enumerated is None or budget.left() <= 0.05:
        return unchanged
    columns = enumerated
    # Rows: one per (expert, count) item (its columns sum to k y[e, k]), one per expert
    # (sum_k y[e, k] = 1), one per node (one column; an added node: its slots), an added
    # node's window, and "one replica of an expert per added node" for variable experts.
    item_row = {
        (e, k): i for i, (e, k) in enumerate((e, k) for e in range(experts) for k in choices[e])
    }
    items = len(item_row)
    expert_row = items
    node_row = items + experts
    window_row = {n: node_row + nodes + i for i, n in enumerate(fresh)}
    variable = [e for e in range(experts) if len(choices[e]) > 1]
    once_row = {
        (e, n): node_row + nodes + len(fresh) + i
        for i, (e, n) in enumerate(itertools.product(variable, fresh))
    }
    rows = node_row + nodes + len(fresh) + len(once_row)
    entries: list[list[tuple[int, float]]] = []
    cost: list[float] = []
    given: list[float] = []
    placed_by: list[tuple[int, tuple[int, ...]]] = []  # what a chosen column puts on a node
    for n, content, moved in columns:
        entries.append([(item_row[i], 1.0) for i in content] + [(node_row + n, 1.0)])
        cost.append(float(moved))
        mine = tuple(sorted((e, int(counts[e])) for e in current[n]))
        given.append(1.0 if content == mine else 0.0)
        placed_by.append((n, tuple(e for e, _ in content)))
    for n in fresh:  # an added node: one binary per (expert, count), each a move
        for (e, k), row in item_row.items():
            column = [(row, 1.0), (node_row + n, 1.0), (window_row[n], loads[e] / k)]
            if (e, n) in once_row:
                column.append((once_row[e, n], 1.0))
            entries.append(column)
            cost.append(1.0)
            given.append(1.0 if e in current[n] and k == counts[e] else 0.0)
            placed_by.append((n, (e,)))
    first_y = len(entries)
    for (e, k), row in item_row.items():  # y[e, k]: e has k replicas
        entries.append([(row, -float(k)), (expert_row + e, 1.0)])
        cost.append(0.0)
        given.append(1.0 if k == counts[e] else 0.0)
    indices = np.array([r for c in entries for r, _ in c], dtype=np.int32)
    data = np.array([v for c in entries for _, v in c], dtype=np.float64)
    indptr = np.concatenate([[0], np.cumsum([len(c) for c in entries])]).astype(np.int32)
    matrix = csc_array((data, indices, indptr), shape=(rows, len(entries)))
    row_lower = np.zeros(rows)
    row_upper = np.zeros(rows)
    row_lower[expert_row : expert_row + experts] = row_upper[expert_row : expert_row + experts] = 1
    for n in held_nodes:
        row_lower[node_row + n] = row_upper[node_row + n] = 1.0
    for n in fresh:
        row_upper[node_row + n] = float(cluster.slots[n])
        row_lower[window_row[n]], row_upper[window_row[n]] = low, high
    for row in once_row.values():
        row_upper[row] = 1.0
    costs = np.asarray(cost)
    start_vector = np.asarray(given, dtype=float)
    # The relaxation first (fast: few rows); reduced-cost fixing then drops every column
    # that no placement with fewer moves than the start can use, which leaves HiGHS's
    # branch and bound a small program (exact: nothing better is cut off).
    relaxed = _highs(matrix, costs, row_lower, row_upper, False, budget, None)
    kept = np.arange(len(entries))
    if relaxed.getModelStatus() == highspy.HighsModelStatus.kOptimal:
        bound = relaxed.getInfo().objective_function_value
        if bound > start_moves - 1 + 1e-6:  # no placement with these counts moves fewer
            return ColumnsResult(current, start_moves, start_moves, len(columns), True)
        reduced = np.asarray(relaxed.getSolution().col_dual)
        keep = (reduced <= start_moves - 1 - bound + 1e-6) | (start_vector > 0.5)
        keep[first_y:] = True
        kept = np.flatnonzero(keep)
    if budget.left() <= 0.05:
        return unchanged
    highs = _highs(
        matrix[:, kept], costs[kept], row_lower, row_upper, True, budget, start_vector[kept]
    )
    solution = highs.getSolution()
    if not solution.value_valid:
        return ColumnsResult(current, start_moves, start_moves, len(columns), False)
    chosen: NDArray[np.float64] = np.zeros(len(entries))
    chosen[kept] = np.asarray(solution.col_value)
    placed: list[list[int]] = [[] for _ in range(nodes)]
    for j in np.flatnonzero(chosen[:first_y] > 0.5):
        n, held = placed_by[j]
        placed[n] += held
    placed = [sorted(n) for n in placed]
    moves = moves_between(before, placed)
    proven = highs.getModelStatus() == highspy.HighsModelStatus.kOptimal
    if moves >= start_moves or not _within(placed, loads, high, choices, cluster.slots):
        return ColumnsResult(current, start_moves, start_moves, len(columns), proven)
    return ColumnsResult(placed, moves, start_moves, len(columns), proven)


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


def _within(
    placed: list[list[int]],
    loads: Loads,
    high: float,
    choices: Sequence[Sequence[int]],
    slots: Sequence[int],
) -> bool:
    """The answer gives each expert one of its counts, one replica per node, the slots and
    the capacity."""
    got = np.bincount([e for n in placed for e in n], minlength=loads.size)
    if any(int(c) not in o for c, o in zip(got, choices, strict=True)):
        return False
    if any(len(set(n)) != len(n) or len(n) > s for n, s in zip(placed, slots, strict=True)):
        return False
    weight = loads / np.maximum(got, 1)
    return max(float(weight[n].sum()) for n in placed if n) <= high * (1 + 1e-7)
