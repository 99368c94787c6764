"""Node expansion and shrink: rebalance from the CURRENT placement moving as few experts as
possible (EPLB recomputes from scratch and ignores where experts already are).

A move is one expert's weights copied onto a node that did not hold them; dropping a replica
is free. The rebalance is a greedy descent on (max node load, sum of squared node loads):
each step takes, off the heaviest node, the action with the largest gain per move among
- move a replica to a node with a free slot (1 move),
- add a replica of one of its experts on another node (1 move; the expert's load spreads),
- either of those onto a full node in place of a redundant replica there (1 move),
- swap a replica with a lighter one on another node (2 moves),
- drop a redundant replica (free),
and it stops at the target max/mean or the move budget. When it stalls, or would spend more
than walking from the start to a fresh placement, it walks to one instead (copy by copy, the
best-balanced step first): when a repack reaches the target, this costs no more moves.
The best max/mean reached within k moves is recorded for every k: one run toward 1.0 gives
the whole trade-off curve. Written by hand: no library solves min-move rebalancing with
replica-dependent loads; the exact MILP (`placement_milp.exact_min_moves`) needs variables
per (expert, node, replica count), so `resize` adds it only on small clusters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from trifecta.core.errors import InvalidInput
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

EPS = 1e-9
METHODS = ("auto", "greedy", "milp")
# `auto` also solves the exact MILP when experts x nodes x replica counts is at most this.
EXACT_MAX = 2000
EXACT_TIME_LIMIT_S = 2.0
# Expert weights copied onto a node, per action.
MOVES = {
    "drop": 0,
    "move": 1,
    "replicate": 1,
    "move-replacing": 1,
    "replicate-replacing": 1,
    "swap": 2,
}
Action = tuple[str, int, int, int]
_Consider = Callable[[Loads, int, Action], None]


class Rebalance(BaseModel):
    """A rebalanced placement, its cost in moves, and the curve it followed."""

    model_config = ConfigDict(extra="forbid")

    placement: Placement
    moves: int
    before: float  # max/mean once forced moves (experts of removed nodes) are done
    imbalance: float
    forced_moves: int
    curve: list[tuple[int, float]]  # (moves, best max/mean within them), where it improves


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


class _State:
    """Mutable placement with cached replica counts and node loads."""

    def __init__(self, nodes: list[list[int]], loads: Loads, slots: Sequence[int]):
        self.nodes = nodes
        self.loads = loads
        self.slots = list(slots)
        self.counts = np.zeros(loads.size, dtype=np.int64)
        for experts in nodes:
            self.counts[experts] += 1
        self.node_load = self._recompute()

    def copy(self) -> _State:
        return _State([list(experts) for experts in self.nodes], self.loads, self.slots)

    def hosts(self) -> list[set[int]]:
        return [set(experts) for experts in self.nodes]

    def _recompute(self) -> Loads:
        weight = self.loads / np.maximum(self.counts, 1)
        return np.array([weight[experts].sum() for experts in self.nodes], dtype=np.float64)

    def holders(self, e: int) -> list[int]:
        return [n for n, experts in enumerate(self.nodes) if e in experts]

    def objective(self, load: Loads) -> tuple[float, float]:
        return float(load.max()), float(np.square(load).sum())

    def with_count(self, e: int, count: int, load: Loads, exclude: int = -1) -> None:
        """Spread expert e over `count` replicas on its holders (except `exclude`), in place."""
        old = self.loads[e] / self.counts[e]
        new = self.loads[e] / count
        for n in self.holders(e):
            if n != exclude:
                load[n] += new - old

    def candidates(self) -> list[tuple[float, float, int, Action]]:
        """(delta max, delta sum of squares, moves, action) for actions off the heaviest node."""
        h = int(np.argmax(self.node_load))
        base = self.objective(self.node_load)
        found: list[tuple[float, float, int, Action]] = []

        def consider(load: Loads, moves: int, action: Action) -> None:
            top, squares = self.objective(load)
            found.append((base[0] - top, base[1] - squares, moves, action))

        weight = self.loads / np.maximum(self.counts, 1)
        for e in self.nodes[h]:
            if self.counts[e] > 1:  # drop this replica
                load = self.node_load.copy()
                self.with_count(e, int(self.counts[e]) - 1, load, exclude=h)
                load[h] -= weight[e]
                consider(load, 0, ("drop", e, h, -1))
            for m in range(len(self.nodes)):
                if m == h or e in self.nodes[m]:
                    continue
                if len(self.nodes[m]) < self.slots[m]:
                    load = self.node_load.copy()
                    load[h] -= weight[e]
                    load[m] += weight[e]
                    consider(load, 1, ("move", e, h, m))
                    load = self.node_load.copy()
                    self.with_count(e, int(self.counts[e]) + 1, load)
                    load[m] += self.loads[e] / (self.counts[e] + 1)
                    consider(load, 1, ("replicate", e, h, m))
                else:
                    self._replacing(e, h, m, weight, consider)
                for f in self.nodes[m]:
                    if weight[f] >= weight[e] or f in self.nodes[h]:
                        continue
                    load = self.node_load.copy()
                    load[h] += weight[f] - weight[e]
                    load[m] += weight[e] - weight[f]
                    consider(load, 2, ("swap", e, m, f))
        return found

    def _replacing(self, e: int, h: int, m: int, weight: Loads, consider: _Consider) -> None:
        """Onto full node m: move e there, or add a replica of e there, in place of a
        redundant replica g of m (1 move each; g spreads over its other replicas)."""
        for g in self.nodes[m]:
            if self.counts[g] < 2:
                continue
            dropped = self.node_load.copy()
            self.with_count(g, int(self.counts[g]) - 1, dropped, exclude=m)
            dropped[m] -= weight[g]
            load = dropped.copy()
            load[h] -= weight[e]
            load[m] += weight[e]
            consider(load, 1, ("move-replacing", e, m, g))
            load = dropped.copy()
            self.with_count(e, int(self.counts[e]) + 1, load)
            load[m] += self.loads[e] / (self.counts[e] + 1)
            consider(load, 1, ("replicate-replacing", e, m, g))

    def apply(self, action: Action) -> None:
        kind, e, a, b = action
        h = int(np.argmax(self.node_load))
        if kind == "drop":
            self.nodes[a].remove(e)
            self.counts[e] -= 1
        elif kind == "move":
            self.nodes[a].remove(e)
            self.nodes[b].append(e)
        elif kind == "replicate":
            self.nodes[b].append(e)
            self.counts[e] += 1
        elif kind in ("move-replacing", "replicate-replacing"):  # e onto node a in place of b
            self.nodes[a][self.nodes[a].index(b)] = e
            self.counts[b] -= 1
            self.counts[e] += 1
            if kind == "move-replacing":
                self.nodes[h].remove(e)
                self.counts[e] -= 1
        else:  # swap e (on the heaviest node h) with b (on node a)
            self.nodes[h][self.nodes[h].index(e)] = b
            self.nodes[a][self.nodes[a].index(b)] = e
        self.node_load = self._recompute()

    def best_step(self) -> Action | None:
        """The action with the largest gain per move; free actions first. None: no gain."""
        best: tuple[tuple[float, float], Action] | None = None
        for d_max, d_squares, moves, action in self.candidates():
            if d_max < -EPS or (d_max <= EPS and d_squares <= EPS):
                continue  # raises the max, or changes nothing worth a move
            cost = max(moves, 1e-3)
            score = (d_max / cost if d_max > EPS else 0.0, d_squares / cost)
            if best is None or score > best[0]:
                best = (score, action)
        return best[1] if best else None

    def walk_step(self, goal: list[set[int]]) -> Action | None:
        """One step toward the placement `goal`, the one leaving the best (max, sum of
        squares): copy a missing replica onto a free slot or in place of a replica the goal
        does not keep there, or drop such a replica. None: at the goal, or blocked."""
        actions: list[Action] = []
        for n, wanted in enumerate(goal):
            spare = [g for g in self.nodes[n] if g not in wanted and self.counts[g] > 1]
            actions += [("drop", g, n, -1) for g in spare]
            full = len(self.nodes[n]) >= self.slots[n]
            for e in wanted - set(self.nodes[n]):
                if full:
                    actions += [("replicate-replacing", e, n, g) for g in spare]
                else:
                    actions.append(("replicate", e, -1, n))
        scored = [(self.objective(self._after(action)), action) for action in actions]
        return min(scored)[1] if scored else None

    def _after(self, action: Action) -> Loads:
        """Node loads after a walk action, without applying it."""
        kind, e, a, b = action
        load = self.node_load.copy()
        dropped, node = {"drop": (e, a), "replicate": (-1, b), "replicate-replacing": (b, a)}[kind]
        if dropped >= 0:
            self.with_count(dropped, int(self.counts[dropped]) - 1, load, exclude=node)
            load[node] -= self.loads[dropped] / self.counts[dropped]
        if kind != "drop":
            self.with_count(e, int(self.counts[e]) + 1, load)
            load[node] += self.loads[e] / (self.counts[e] + 1)
        return load


def _rehome_orphans(state: _State, orphans: list[int]) -> int:
    """Place experts that lost every replica, heaviest first, onto the lightest node with a
    free slot, dropping a redundant replica there when every node is full. Returns moves."""
    for e in sorted(orphans, key=lambda x: -state.loads[x]):
        order = np.argsort(state.node_load, kind="stable")
        target = next((int(n) for n in order if len(state.nodes[n]) < state.slots[n]), None)
        if target is None:
            target = next(
                (int(n) for n in order if any(state.counts[f] > 1 for f in state.nodes[n])), None
            )
            if target is None:
                raise InvalidInput("the remaining slots cannot hold every expert", field="remove")
            spare = min(
                (f for f in state.nodes[target] if state.counts[f] > 1),
                key=lambda f: state.loads[f],
            )
            state.nodes[target].remove(spare)
            state.counts[spare] -= 1
        state.nodes[target].append(e)
        state.counts[e] += 1
        state.node_load = state._recompute()
    return len(orphans)


def rebalance(
    nodes: list[list[int]],
    loads: Loads,
    cluster: Cluster,
    target: float = 1.05,
    max_moves: int | None = None,
    orphans: Sequence[int] = (),
) -> Rebalance:
    """Rebalance `nodes` (a placement on `cluster`, possibly with empty new nodes and missing
    `orphans`) for `loads`, with as few moves as reach `target` max/mean. Returns the most
    balanced placement reached within `max_moves`."""
    loads = np.asarray(loads, dtype=np.float64)
    state = _State([list(experts) for experts in nodes], loads, cluster.slots)
    forced = moves = _rehome_orphans(state, list(orphans))
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
        over = action is not None and moves + MOVES[action[0]] > direct[1]
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
                jump = moves_between(state.hosts(), [sorted(n) for n in goal])
                if max_moves is not None and moves + jump > max_moves:
                    break
                state, moves = _State([sorted(n) for n in goal], loads, cluster.slots), moves + jump
        if action is not None:
            if max_moves is not None and moves + MOVES[action[0]] > max_moves:
                break
            state.apply(action)
            moves += MOVES[action[0]]
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
    origins: Sequence[tuple[_State, int]],
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
) -> Rebalance:
    """Add `add` empty nodes and remove the nodes `remove` (old indices), then rebalance.
    Kept nodes keep their order; added nodes come last. `method`: greedy, milp (also solve
    `exact_min_moves` and keep it when it moves fewer experts), or auto (milp when small and
    no move budget is given)."""
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}", field="method", allowed=METHODS)
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
    greedy = rebalance(nodes, loads, cluster, target, max_moves, orphans)
    size = loads.size * cluster.nodes * cluster.nodes
    if method == "greedy" or (method == "auto" and (max_moves is not None or size > EXACT_MAX)):
        return greedy
    from trifecta.generative.placement_milp import exact_min_moves

    level = max(target, greedy.imbalance)
    exact = exact_min_moves([set(n) for n in nodes], loads, cluster, level, EXACT_TIME_LIMIT_S)
    if exact is None or exact[1] >= greedy.moves:
        return greedy
    placement = Placement(cluster=cluster, num_experts=loads.size, nodes=exact[0], method="milp")
    reached = placement.imbalance(loads)
    return greedy.model_copy(
        update={
            "placement": placement,
            "moves": exact[1],
            "imbalance": reached,
            "curve": pareto([*greedy.curve, (exact[1], reached)]),
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
