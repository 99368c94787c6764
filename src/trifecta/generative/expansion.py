"""Node expansion and shrink: rebalance from the CURRENT placement moving as few experts as
possible (EPLB recomputes from scratch and ignores where experts already are).

A move is one expert's weights copied onto a node that did not hold them before; dropping a
replica is free, and so is putting back an expert the node held before. The rebalance is a
greedy descent on (max node load, sum of squared node loads): each step takes, off the
heaviest node, the action with the largest gain per move among
- move a replica to a node with a free slot,
- add a replica of one of its experts on another node (the expert's load spreads),
- either of those onto a full node in place of a redundant replica there,
- swap a replica with a lighter one on another node,
- drop a redundant replica,
and it stops at the target max/mean or the move budget. Actions are ranked either by the
weights they copy or by the moves they add counted from the start (a copy taken back is a
refund); `resize` runs both and keeps the fewer moves. When the descent stalls, or would
spend more than walking from the start to a fresh placement, it walks to one instead (copy
by copy, the best-balanced step first): when a repack reaches the target, this costs no
more moves. The best max/mean reached within k moves is recorded for every k: one run
toward 1.0 gives the whole trade-off curve.

Then `resize` (auto) hands the greedy's answer to the min-move MILP
(`placement_milp.min_moves_floor`, HiGHS, started from that answer under a time limit) and
keeps the MILP's placement only when it moves fewer experts, so it never moves more than
the greedy; `Rebalance.solver` says which answer was kept and whether the MILP was proven
optimal or stopped by the time limit. Written by hand: no library solves min-move
rebalancing with replica-dependent loads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

from trifecta.core.errors import InvalidInput
from trifecta.generative.expansion_state import EPS, State, rehome_orphans
from trifecta.generative.placement import (
    Cluster,
    Loads,
    Placement,
    aligned,
    eplb_greedy,
    imbalance,
    moves_between,
    place,
)
from trifecta.generative.placement_milp import Budget

if TYPE_CHECKING:
    from trifecta.generative.placement_milp import MoveFloor

METHODS = ("auto", "greedy", "milp", "search")
# `auto` solves the exact MILP (z[e, n, k]: experts x nodes x replica counts columns) up to
# this size (16 experts on 5 nodes is 400); above it, the search alone. At 64 experts on 9
# nodes (5184) the MILP took half the budget and its answer was kept at the repack's
# max/mean on 0 of 12 benchmark traces (3 of 12 at 1.05, a level the search reaches too).
EXACT_MAX = 1000
# CPU seconds of this process for the MILP and the search (`placement_milp.Budget`: the
# answer does not depend on other jobs' load; the wall clock is capped at `WALL_CAP` x it).
EXACT_TIME_LIMIT_S = 5.0
# Method milp above this size: the whole MILP gets half the limit and a
# large-neighbourhood search (`placement_lns`) the rest, from the better answer.
LNS_ABOVE = 1000
# Of the search's time, the LNS first gets a fifth (or stops sooner at its local minimum),
# annealing (`placement_anneal`) a quarter of the rest, the set partitioning program over
# node configurations (`placement_columns`; with `vary_counts`, then a second one with the
# hot experts' counts free) the remainder, the LNS what that leaves (the program needs
# seconds of branch and bound). Measured at
# the repack's max/mean on 16 development instances (expansion and removal, 64 and 128
# experts): the LNS first 0.237 of the repack's moves against 0.249 without it. With the
# program after annealing (on 10 development expansions, 5 CPU seconds, load 8-11), the
# moves summed 228 against 244 for the LNS in its place with annealing's half.
LNS_FIRST_SHARE = 0.2
ANNEAL_SHARE = 0.25


class Rebalance(BaseModel):
    """A rebalanced placement, its cost in moves, and the curve it followed."""

    model_config = ConfigDict(extra="forbid")

    placement: Placement
    moves: int
    before: float  # max/mean once forced moves (experts of removed nodes) are done
    imbalance: float
    forced_moves: int
    curve: list[tuple[int, float]]  # (moves, best max/mean within them), where it improves
    solver: str = "greedy"  # which answer `resize` kept: the greedy's or the MILP's, and why


def resized_cluster(
    cluster: Cluster, add: int, remove: Sequence[int], new_node_slots: int | None
) -> tuple[Cluster, list[int]]:
    """The cluster after removing and adding nodes, and the old index of each kept node."""
    bad = [n for n in remove if not 0 <= n < cluster.nodes]
    if bad:
        raise InvalidInput(f"no node {bad[0]} in a cluster of {cluster.nodes}", field="remove")
    kept = [n for n in range(cluster.nodes) if n not in set(remove)]
    slots = [cluster.slots[n] for n in kept] + [new_node_slots or max(cluster.slots)] * add
    if not slots:
        raise InvalidInput("cannot remove every node", field="remove")
    return Cluster(slots=slots), kept


def rebalance(
    nodes: list[list[int]],
    loads: Loads,
    cluster: Cluster,
    target: float = 1.05,
    max_moves: int | None = None,
    orphans: Sequence[int] = (),
    by_copies: bool = True,
) -> Rebalance:
    """Rebalance `nodes` (a placement on `cluster`, possibly with empty new nodes and missing
    `orphans`) for `loads`, with as few moves as reach `target` max/mean. Returns the most
    balanced placement reached within `max_moves`. `by_copies`: rank actions by the weights
    they copy (else by the moves they add, taking a move back counting as a refund)."""
    loads = np.asarray(loads, dtype=np.float64)
    before_sets = [set(experts) for experts in nodes]
    state = State([list(e) for e in nodes], loads, cluster.slots, before_sets, by_copies)
    forced = moves = rehome_orphans(state, list(orphans))
    start = state.copy()
    before = imbalance(state.node_load)
    points = [(moves, before)]
    best = (before, moves, start.copy())
    fresh = (place(loads, cluster, "greedy"), eplb_greedy(loads, cluster))
    # Walking from the start to a fresh placement bounds the cost: the descent gives way to
    # that walk when it would spend more, so no rebalance costs more than a repack.
    direct = min(_walks(fresh, loads, target, [(start, forced)], cluster.slots), key=_rank)
    goal: list[set[int]] | None = None  # set once the descent gives way to a walk
    while best[0] > target + EPS:
        action = state.best_step() if goal is None else None
        over = action is not None and moves + state.cost(action) > direct[1]
        if goal is None and (action is None or (over and direct[0] <= target)):
            # Stalled or too dear: walk to a fresh placement (ours or the EPLB-style one,
            # aligned so that what can stay stays) from here or from the start, whichever
            # reaches the target (else the best balance) with the fewest moves.
            origins = [(state, moves), (start, forced)]
            _, _, restart, goal = min(
                _walks(fresh, loads, target, origins, cluster.slots), key=_rank
            )
            action = None
            if restart:
                state, moves = start.copy(), forced
        if action is None and goal is not None:
            action = state.walk_step(goal)
            if action is None and state.hosts() != goal:
                # Blocked (full nodes waiting on each other's last replicas): jump to the goal.
                aim = [sorted(n) for n in goal]
                state = State(aim, loads, cluster.slots, before_sets, by_copies)
                if max_moves is not None and moves_between(before_sets, state.nodes) > max_moves:
                    break
                moves = moves_between(before_sets, state.nodes)
        if action is not None:
            step = state.cost(action)
            if max_moves is not None and moves + step > max_moves:
                break
            state.apply(action)
            moves += step
        if action is None and (goal is None or state.hosts() == goal) and points[-1][0] == moves:
            break
        points.append((moves, imbalance(state.node_load)))
        if points[-1][1] < best[0] - EPS:
            best = (points[-1][1], moves, state.copy())
    reached, spent, final = best
    placement = Placement(
        cluster=cluster, num_experts=loads.size, nodes=final.nodes, method="min-move"
    )
    return Rebalance(
        placement=placement,
        moves=spent,
        before=before,
        imbalance=reached,
        forced_moves=forced,
        curve=pareto(points),
    )


def _walks(
    fresh: Sequence[Placement],
    loads: Loads,
    target: float,
    origins: Sequence[tuple[State, int]],
    slots: Sequence[int],
) -> list[tuple[float, int, bool, list[set[int]]]]:
    """(max/mean reached or the target, total moves, from the start?, goal) per walk."""
    walks = []
    for placement in fresh:
        reach = max(placement.imbalance(loads), target)
        for index, (origin, spent) in enumerate(origins):
            aim = aligned(placement.nodes, origin.hosts(), slots)
            cost = spent + moves_between(origin.hosts(), aim)
            walks.append((reach, cost, index == len(origins) - 1, [set(n) for n in aim]))
    return walks


def _rank(walk: tuple[float, int, bool, list[set[int]]]) -> tuple[float, int, bool]:
    return walk[:3]


def pareto(points: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """The best max/mean reached with at most k moves, at each k where it improves."""
    front: list[tuple[int, float]] = []
    for moves, value in sorted(points):
        if not front or value < front[-1][1] - EPS:
            front.append((moves, value))
    return front


def resize(
    current: Placement,
    loads: Loads,
    add: int = 0,
    remove: Sequence[int] = (),
    new_node_slots: int | None = None,
    target: float = 1.05,
    max_moves: int | None = None,
    method: str = "auto",
    time_limit_s: float = EXACT_TIME_LIMIT_S,
    vary_counts: int = 0,
) -> Rebalance:
    """Add `add` empty nodes and remove the nodes `remove` (old indices), then rebalance.
    Kept nodes keep their order; added nodes come last. `method`: greedy (the descent, run
    ranking actions both ways, the fewer moves kept); milp (the greedy answer, then the
    exact min-move MILP started from it under `time_limit_s`, kept when it moves fewer
    experts: never more than the greedy); search (from the greedy's answer the LNS,
    annealing, the node-content program and the LNS again, under `time_limit_s`; kept when
    it moves fewer experts); auto (as milp without a move budget up to `EXACT_MAX`, search
    above it). `vary_counts` (the `rebalance_vary_counts` setting): how many of the hot
    experts the search's node-content program may then give one replica more or fewer, in a
    second program from the first's answer; 0 (the default): no second program. Off by
    default: on the 24 benchmark traces at the strict level (5 CPU s, load 8-11) it ran on 8
    (the first program spent the budget on the others) and lowered the moves on none; its
    branch and bound needs 5-20 CPU s at 64-128 experts (given 19 s, 25 moves where the fixed
    counts' optimum was 33). With 20 CPU s a rebalance (vary 10 against 0, alternated, 8 of
    those traces, load 6-7) no gain either: 160 moves summed against 153 (fewer on 2, equal
    on 3, more on 3, within the search's run-to-run spread). `solver` in the result says
    which answer was used and which phase found it."""
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}", field="method", allowed=METHODS)
    if time_limit_s <= 0:
        raise InvalidInput("must be > 0 seconds", field="time_limit")
    if vary_counts < 0:
        raise InvalidInput(f"must be >= 0, got {vary_counts}", field="vary_counts")
    loads = np.asarray(loads, dtype=np.float64)
    if loads.size != current.num_experts:
        raise InvalidInput(
            f"got {loads.size} loads for {current.num_experts} experts", field="loads"
        )
    cluster, kept = resized_cluster(current.cluster, add, remove, new_node_slots)
    if cluster.total_slots < current.num_experts:
        raise InvalidInput(
            f"{cluster.total_slots} slots left for {current.num_experts} experts", field="remove"
        )
    nodes = [list(current.nodes[n]) for n in kept] + [[] for _ in range(add)]
    held = {e for experts in nodes for e in experts}
    orphans = [e for e in range(current.num_experts) if e not in held]
    runs = [
        rebalance(nodes, loads, cluster, target, max_moves, orphans, rank) for rank in (True, False)
    ]
    greedy = min(runs, key=lambda r: (max(r.imbalance, target), r.moves))
    if method == "greedy" or (method == "auto" and max_moves is not None):
        return greedy
    before = [set(n) for n in nodes]
    if method == "search":  # what `auto` runs above EXACT_MAX, at any size
        level = max(target, greedy.imbalance)
        return _searched(
            greedy, None, before, loads, level, time_limit_s, time_limit_s, vary_counts
        )
    return _exact(greedy, before, loads, target, method, time_limit_s, vary_counts)


def _exact(
    greedy: Rebalance,
    before: list[set[int]],
    loads: Loads,
    target: float,
    method: str,
    time_limit_s: float,
    vary_counts: int,
) -> Rebalance:
    """The exact min-move MILP from the greedy answer; the fewer moves kept, and said."""
    from trifecta.generative.placement_milp import min_moves_floor

    cluster = greedy.placement.cluster
    most = sum(1 for s in cluster.slots if s > 0)
    level = max(target, greedy.imbalance)
    if method == "auto" and loads.size * cluster.nodes * most > EXACT_MAX:
        # Too large for the whole MILP: the search alone gets the time limit.
        return _searched(
            greedy, None, before, loads, level, time_limit_s, time_limit_s, vary_counts
        )
    budget = Budget.of(time_limit_s)
    search = loads.size * cluster.nodes * most > LNS_ABOVE
    exact = budget.part(time_limit_s / 2) if search else budget
    floor = min_moves_floor(before, loads, cluster, level, exact, greedy.placement.nodes)
    program = "exact MILP"
    if search and not floor.proven and budget.left() > 0.05:
        return _searched(greedy, floor, before, loads, level, budget, time_limit_s, vary_counts)
    if floor.placed is None or floor.moves is None or floor.moves >= greedy.moves:
        why = (
            "proved no placement moves fewer"
            if floor.proven
            else f"stopped by the {time_limit_s:g} s time limit with no fewer moves"
        )
        return greedy.model_copy(update={"solver": f"greedy ({program} {why})"})
    placement = Placement(
        cluster=cluster, num_experts=loads.size, nodes=floor.placed, method="milp"
    )
    reached = placement.imbalance(loads)
    status = (
        "optimal"
        if floor.proven
        else f"best found when the {time_limit_s:g} s time limit stopped it"
    )
    return greedy.model_copy(
        update={
            "placement": placement,
            "moves": floor.moves,
            "imbalance": reached,
            "curve": pareto([*greedy.curve, (floor.moves, reached)]),
            "solver": f"{program} ({status}) from the greedy's {greedy.moves} moves",
        }
    )


def _searched(
    greedy: Rebalance,
    floor: MoveFloor | None,
    before: list[set[int]],
    loads: Loads,
    level: float,
    limit: float | Budget,
    time_limit_s: float,
    vary_counts: int = 0,
) -> Rebalance:
    """From the better of the greedy's and the MILP's answers, the LNS, annealing and the
    LNS again, for the time left; kept when it moves fewer experts than the greedy."""
    from trifecta.generative.placement_anneal import anneal_min_moves
    from trifecta.generative.placement_columns import columns_min_moves
    from trifecta.generative.placement_lns import lns_min_moves

    budget = Budget.of(limit)
    left = budget.left()
    cluster = greedy.placement.cluster
    start, origin = greedy.placement.nodes, "greedy's"
    program = "annealing and LNS" if floor is None else "exact MILP, annealing and LNS"
    better = floor is not None and floor.moves is not None and floor.moves < greedy.moves
    if better and floor is not None and floor.placed is not None:
        start, origin = floor.placed, "exact MILP's"
    start_moves = moves_between(before, start)
    # The LNS first (to its local minimum or its share of the time): what follows only
    # starts from its answer and never moves more, so the answer is never worse than the
    # LNS's alone. Annealing then roams far from there in cheap steps, and the LNS polishes
    # its answer with exact three-node re-solves (each alone lost to the pair on some traces).
    phases: list[tuple[str, float, int]] = []  # (phase, CPU seconds, moves after it)
    clock = time.process_time()

    def done(name: str, moves: int) -> None:
        nonlocal clock
        phases.append((name, time.process_time() - clock, moves))
        clock = time.process_time()

    first = lns_min_moves(before, loads, cluster, level, start, budget.part(left * LNS_FIRST_SHARE))
    start = first.placed
    done("LNS", first.moves)
    part = budget.part(budget.left() * ANNEAL_SHARE)
    annealed = anneal_min_moves(before, loads, cluster, level, start, part)
    if annealed.moves < moves_between(before, start):
        start = annealed.placed
    done("annealing", moves_between(before, start))
    # Then every node at once: the set partitioning program over node configurations
    # (`placement_columns`), first for the answer's replica counts (a small program whose
    # branch and bound mostly finishes), then, with `vary_counts`, from its answer with the
    # hot experts' counts free to change by one (a larger one, which the better incumbent
    # prunes); the LNS
    # gets what they leave. Each stops early when it proves the fewest moves it allows.
    columns = columns_min_moves(before, loads, cluster, level, start, budget)
    start = columns.placed
    done("node contents", columns.moves)
    if vary_counts and budget.left() > 0.05:
        freed = columns_min_moves(before, loads, cluster, level, start, budget, vary=vary_counts)
        start = freed.placed
        done("node contents with counts free", freed.moves)
    found = lns_min_moves(before, loads, cluster, level, start, budget)
    done("LNS", found.moves)
    # Which phase first reached the final answer's moves, and each phase's CPU.
    winner = next(name for name, _, moves in phases if moves == found.moves)
    spent = ", ".join(f"{name} {cpu:.1f} s to {moves}" for name, cpu, moves in phases)
    if found.moves >= greedy.moves:
        return greedy.model_copy(
            update={
                "solver": f"greedy ({program} found no fewer moves within the "
                f"{time_limit_s:g} s time limit)"
            }
        )
    placement = Placement(
        cluster=cluster, num_experts=loads.size, nodes=found.placed, method="milp"
    )
    reached = placement.imbalance(loads)
    return greedy.model_copy(
        update={
            "placement": placement,
            "moves": found.moves,
            "imbalance": reached,
            "curve": pareto([*greedy.curve, (found.moves, reached)]),
            "solver": f"annealing and LNS ({found.improved} of {found.rounds} "
            f"neighbourhoods improved within the {time_limit_s:g} s time limit): the "
            f"{origin} {start_moves} moves, searched to {first.moves}, annealed to "
            f"{annealed.moves}, node contents re-chosen to {moves_between(before, start)}, "
            "searched to "
            f"{found.moves} (greedy {greedy.moves}); CPU per phase: {spent}; "
            f"the answer's moves first reached by {winner}",
        }
    )


def nodes_needed(total_load: float, nodes: int, per_node_threshold: float, low: float) -> int:
    """How many nodes the cluster should have: more when the mean load per node passes
    `per_node_threshold`, fewer when it falls below `low` (hysteresis), else unchanged."""
    if per_node_threshold <= 0 or not 0 <= low < per_node_threshold:
        raise InvalidInput("need 0 <= low < threshold", field="threshold")
    wanted = max(1, math.ceil(total_load / per_node_threshold))
    mean = total_load / nodes
    if mean > per_node_threshold or mean < low:
        return wanted
    return nodes


def nodes_to_remove(placement: Placement, count: int) -> list[int]:
    """The `count` nodes whose removal orphans the fewest experts (fewest forced moves)."""
    replicas = placement.replicas().copy()
    chosen: list[int] = []
    for _ in range(count):
        left = [n for n in range(placement.cluster.nodes) if n not in chosen]
        sole = [sum(1 for e in placement.nodes[n] if replicas[e] == 1) for n in left]
        pick = left[int(np.argmin(sole))]
        chosen.append(pick)
        replicas[placement.nodes[pick]] -= 1
    return sorted(chosen)
