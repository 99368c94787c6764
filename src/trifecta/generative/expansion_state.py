"""The mutable placement the min-move rebalance (`expansion.rebalance`) works on: node
lists with cached replica counts and node loads, the actions the descent may take off the
heaviest node, what each one costs in moves counted from the placement before the
rebalance, and the re-homing of experts a removed node held alone.

Written by hand: no library does min-move rebalancing with replica-dependent loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from trifecta.core.errors import InvalidInput
from trifecta.generative.placement import Loads

EPS = 1e-9
# Expert weights an action copies onto nodes, as the descent ranks actions (the count it
# reports is `State.cost`, which also refunds taking a move back).
COPIES = {
    "drop": 0,
    "move": 1,
    "replicate": 1,
    "move-replacing": 1,
    "replicate-replacing": 1,
    "swap": 2,
}
Action = tuple[str, int, int, int]
_Consider = Callable[[Loads, Action], None]


class State:
    """Mutable placement with cached replica counts and node loads."""

    def __init__(
        self,
        nodes: list[list[int]],
        loads: Loads,
        slots: Sequence[int],
        before: Sequence[set[int]],
        by_copies: bool = True,
    ):
        self.nodes = nodes
        self.before = before  # what each node held before the rebalance: moves count from it
        self.by_copies = by_copies  # rank actions by copies made, else by moves counted
        self.loads = loads
        self.slots = list(slots)
        self.counts = np.zeros(loads.size, dtype=np.int64)
        for experts in nodes:
            self.counts[experts] += 1
        self.node_load = self._recompute()

    def copy(self) -> State:
        return State(
            [list(experts) for experts in self.nodes],
            self.loads,
            self.slots,
            self.before,
            self.by_copies,
        )

    def hosts(self) -> list[set[int]]:
        return [set(experts) for experts in self.nodes]

    def _recompute(self) -> Loads:
        weight = self.loads / np.maximum(self.counts, 1)
        return np.array([weight[experts].sum() for experts in self.nodes], dtype=np.float64)

    def holders(self, e: int) -> list[int]:
        return [n for n, experts in enumerate(self.nodes) if e in experts]

    def _new(self, e: int, n: int) -> int:
        """1 when a replica of e on n is a move (n did not hold e before)."""
        return int(e not in self.before[n])

    def cost(self, action: Action) -> int:
        """The change in moves counted from `before` (taking back a move refunds it), so
        re-adding an expert a node held before is free."""
        kind, e, a, b = action
        h = int(np.argmax(self.node_load))
        if kind == "drop":
            return -self._new(e, a)
        if kind == "move":
            return self._new(e, b) - self._new(e, h)
        if kind == "replicate":
            return self._new(e, b)
        if kind == "move-replacing":
            return self._new(e, a) - self._new(b, a) - self._new(e, h)
        if kind == "replicate-replacing":
            return self._new(e, a) - self._new(b, a)
        return self._new(e, a) + self._new(b, h) - self._new(e, h) - self._new(b, a)  # swap

    def rank_cost(self, action: Action) -> int:
        return COPIES[action[0]] if self.by_copies else self.cost(action)

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

        def consider(load: Loads, action: Action) -> None:
            top, squares = self.objective(load)
            found.append((base[0] - top, base[1] - squares, self.rank_cost(action), action))

        weight = self.loads / np.maximum(self.counts, 1)
        for e in self.nodes[h]:
            if self.counts[e] > 1:  # drop this replica
                load = self.node_load.copy()
                self.with_count(e, int(self.counts[e]) - 1, load, exclude=h)
                load[h] -= weight[e]
                consider(load, ("drop", e, h, -1))
            for m in range(len(self.nodes)):
                if m == h or e in self.nodes[m]:
                    continue
                if len(self.nodes[m]) < self.slots[m]:
                    load = self.node_load.copy()
                    load[h] -= weight[e]
                    load[m] += weight[e]
                    consider(load, ("move", e, h, m))
                    load = self.node_load.copy()
                    self.with_count(e, int(self.counts[e]) + 1, load)
                    load[m] += self.loads[e] / (self.counts[e] + 1)
                    consider(load, ("replicate", e, h, m))
                else:
                    self._replacing(e, h, m, weight, consider)
                for f in self.nodes[m]:
                    if weight[f] >= weight[e] or f in self.nodes[h]:
                        continue
                    load = self.node_load.copy()
                    load[h] += weight[f] - weight[e]
                    load[m] += weight[e] - weight[f]
                    consider(load, ("swap", e, m, f))
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
            consider(load, ("move-replacing", e, m, g))
            load = dropped.copy()
            self.with_count(e, int(self.counts[e]) + 1, load)
            load[m] += self.loads[e] / (self.counts[e] + 1)
            consider(load, ("replicate-replacing", e, m, g))

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


def rehome_orphans(state: State, orphans: list[int]) -> int:
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
