"""Expert placement from measured load: replicate the hottest experts into the redundant
slots and pack the replicas on nodes so the most loaded node is as close to the mean as the
slots allow (the problem DeepSeek's EPLB solves), within each node's memory.

Load model (EPLB's): an expert's tokens are split evenly over its replicas, so a replica of
expert e weighs `load[e] / replicas[e]`, and a node's load is the sum of its replicas'
weights. Two replicas of one expert never share a node (the second would add nothing).

Method, and why:
- Replication by water-filling (give the next replica to the expert with the largest load per
  replica). For a given number of replicas this minimises the heaviest replica exactly.
- Packing by LPT (heaviest replica first, onto the lightest node with a free slot), then a
  local search of moves and swaps off the heaviest node. Replica-count candidates between
  "one per expert" and "every slot" are each packed and the best kept: filling every slot
  forces every node to hold exactly its slot count, which can pack worse than fewer replicas.
- `method="milp"` re-solves the packing for the chosen replica counts exactly with HiGHS
  (`scipy.optimize.milp`, minimise the max node load), under a time limit; it is used by
  `auto` only for small instances, where it is cheap and can beat the local search.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trifecta.core.errors import InvalidInput

Method = Literal["auto", "greedy", "milp"]
METHODS: tuple[str, ...] = ("auto", "greedy", "milp")
# `auto` runs the exact packing when the 0/1 variables (experts x nodes) are at most this many.
MILP_MAX_VARIABLES = 128
MILP_TIME_LIMIT_S = 1.0
REPLICA_CANDIDATES = 6

Loads = NDArray[np.float64]


class ReplicasDoNotFit(InvalidInput):
    """LPT found no node with a free slot lacking the expert (uneven slots, many replicas)."""


class Cluster(BaseModel):
    """Nodes and how many expert replicas each node's memory holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slots: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _positive(self) -> Cluster:
        if min(self.slots) < 0:
            raise InvalidInput("a node cannot have negative slots", field="slots_per_node")
        return self

    @classmethod
    def uniform(cls, nodes: int, slots_per_node: int) -> Cluster:
        return cls(slots=[slots_per_node] * nodes)

    @classmethod
    def from_memory(cls, nodes: int, memory_bytes: int, expert_bytes: int) -> Cluster:
        per_node = memory_bytes // expert_bytes
        if per_node < 1:
            raise InvalidInput(
                f"{memory_bytes} bytes hold no expert of {expert_bytes} bytes", field="memory_bytes"
            )
        return cls.uniform(nodes, per_node)

    @classmethod
    def with_redundancy(cls, nodes: int, experts: int, redundancy: float) -> Cluster:
        """Enough equal nodes for every expert plus `redundancy` x experts redundant slots."""
        if redundancy < 0:
            raise InvalidInput("must be >= 0", field="redundancy")
        total = math.ceil(experts * (1.0 + redundancy) - 1e-9)
        return cls.uniform(nodes, -(-total // nodes))

    @property
    def nodes(self) -> int:
        return len(self.slots)

    @property
    def total_slots(self) -> int:
        return sum(self.slots)


class Placement(BaseModel):
    """Which experts each node hosts (one slot per replica)."""

    model_config = ConfigDict(extra="forbid")

    cluster: Cluster
    num_experts: int = Field(ge=1)
    nodes: list[list[int]]
    method: str = ""

    @model_validator(mode="after")
    def _valid(self) -> Placement:
        if len(self.nodes) != self.cluster.nodes:
            raise InvalidInput("one expert list per node is required", field="nodes")
        for index, (experts, slots) in enumerate(zip(self.nodes, self.cluster.slots, strict=True)):
            if len(experts) > slots:
                raise InvalidInput(f"node {index} holds {len(experts)} > {slots}", field="nodes")
            if len(set(experts)) != len(experts):
                raise InvalidInput(f"node {index} holds an expert twice", field="nodes")
            if experts and (min(experts) < 0 or max(experts) >= self.num_experts):
                raise InvalidInput(f"node {index} holds an unknown expert", field="nodes")
        missing = np.flatnonzero(self.replicas() == 0)
        if missing.size:
            raise InvalidInput(f"experts without a replica: {missing.tolist()}", field="nodes")
        return self

    def replicas(self) -> NDArray[np.int64]:
        flat = [e for experts in self.nodes for e in experts]
        return np.bincount(np.asarray(flat, dtype=np.int64), minlength=self.num_experts)

    def replica_count(self) -> int:
        return sum(len(experts) for experts in self.nodes)

    def node_loads(self, loads: Loads) -> Loads:
        weight = np.asarray(loads, dtype=np.float64) / np.maximum(self.replicas(), 1)
        return np.array([weight[experts].sum() for experts in self.nodes], dtype=np.float64)

    def imbalance(self, loads: Loads) -> float:
        return imbalance(self.node_loads(loads))

    def hosts(self) -> list[set[int]]:
        return [set(experts) for experts in self.nodes]


def imbalance(node_loads: Loads) -> float:
    """max / mean node load (1.0 is perfect; an idle cluster counts as balanced)."""
    mean = float(np.mean(node_loads))
    return float(np.max(node_loads)) / mean if mean > 0 else 1.0


def parse_loads(values: Iterable[object], experts: int | None = None) -> Loads:
    try:
        loads = np.array([float(str(v).strip()) for v in values], dtype=np.float64)
    except ValueError as exc:
        raise InvalidInput("per-expert loads must be numbers", field="loads") from exc
    if loads.size == 0 or not np.all(np.isfinite(loads)) or np.any(loads < 0):
        raise InvalidInput("need one finite load >= 0 per expert", field="loads")
    if experts is not None and loads.size != experts:
        raise InvalidInput(f"got {loads.size} loads for {experts} experts", field="loads")
    return loads


def loads_from_trace(expert_ids: Sequence[int], experts: int | None = None) -> Loads:
    """Per-expert token counts of a routing trace (one routed expert id per entry)."""
    ids = np.asarray(expert_ids, dtype=np.int64)
    if ids.size == 0 or ids.min() < 0:
        raise InvalidInput("need expert ids >= 0", field="trace")
    if experts is not None and ids.max() >= experts:
        raise InvalidInput(f"expert id {ids.max()} >= {experts} experts", field="trace")
    return np.bincount(ids, minlength=experts or 0).astype(np.float64)


def _check_fits(loads: Loads, cluster: Cluster) -> None:
    if cluster.total_slots < loads.size:
        raise InvalidInput(
            f"{cluster.total_slots} slots cannot hold {loads.size} experts", field="slots_per_node"
        )


def replication_order(loads: Loads, extra: int, max_replicas: int) -> list[int]:
    """The experts that get the 1st, 2nd, ... redundant replica (water-filling on
    load per replica, at most `max_replicas` per expert)."""
    counts = np.ones(loads.size, dtype=np.int64)
    heap = [(-float(load), e) for e, load in enumerate(loads) if max_replicas > 1]
    heapq.heapify(heap)
    order: list[int] = []
    while heap and len(order) < extra:
        _, e = heapq.heappop(heap)
        order.append(e)
        counts[e] += 1
        if counts[e] < max_replicas:
            heapq.heappush(heap, (-float(loads[e]) / counts[e], e))
    return order


def _replica_counts(loads: Loads, order: list[int], extra: int) -> NDArray[np.int64]:
    counts = np.ones(loads.size, dtype=np.int64)
    np.add.at(counts, np.asarray(order[:extra], dtype=np.int64), 1)
    return counts


def lpt_pack(loads: Loads, counts: NDArray[np.int64], cluster: Cluster) -> list[list[int]]:
    """Heaviest replica first, onto the lightest node with a free slot that lacks the expert."""
    weight = loads / counts
    replicas = sorted(
        ((weight[e], e) for e in range(loads.size) for _ in range(int(counts[e]))),
        key=lambda item: (-item[0], item[1]),
    )
    nodes: list[list[int]] = [[] for _ in cluster.slots]
    node_load = np.zeros(cluster.nodes)
    free = np.array(cluster.slots, dtype=np.int64)
    for w, e in replicas:
        allowed = (free > 0) & np.array([e not in experts for experts in nodes])
        if not allowed.any():
            raise ReplicasDoNotFit("replicas do not fit on distinct nodes", field="slots_per_node")
        # Ties go to the node with the most free slots, so slot-tight nodes fill last.
        candidates = np.flatnonzero(allowed)
        best = candidates[np.lexsort((-free[candidates], node_load[candidates]))[0]]
        nodes[best].append(e)
        node_load[best] += w
        free[best] -= 1
    return nodes


def improve(
    nodes: list[list[int]], weight: Loads, slots: Sequence[int], max_rounds: int = 10_000
) -> list[list[int]]:
    """Local search: the move or swap off the heaviest node that lowers the pair's max the
    most, until none lowers it below the heaviest node's load. Node lists are copied."""
    nodes = [list(experts) for experts in nodes]
    load = np.array([weight[experts].sum() for experts in nodes], dtype=np.float64)
    for _ in range(max_rounds):
        h = int(np.argmax(load))
        best: tuple[float, int, int, int] | None = None  # (pair max, source idx, node, target idx)
        for m in range(len(nodes)):
            if m == h:
                continue
            held = set(nodes[m])
            for i, e in enumerate(nodes[h]):
                if e in held:
                    continue
                if len(nodes[m]) < slots[m]:  # move e to m
                    pair = max(load[h] - weight[e], load[m] + weight[e])
                    if pair < load[h] - 1e-12 and (best is None or pair < best[0]):
                        best = (pair, i, m, -1)
                source = set(nodes[h])
                for j, f in enumerate(nodes[m]):  # swap e <-> f
                    delta = weight[e] - weight[f]
                    if delta <= 0 or f in source:
                        continue
                    pair = max(load[h] - delta, load[m] + delta)
                    if pair < load[h] - 1e-12 and (best is None or pair < best[0]):
                        best = (pair, i, m, j)
        if best is None:
            break
        _, i, m, j = best
        e = nodes[h][i]
        if j < 0:
            nodes[h].pop(i)
            nodes[m].append(e)
            load[h] -= weight[e]
            load[m] += weight[e]
        else:
            f = nodes[m][j]
            nodes[h][i], nodes[m][j] = f, e
            load[h] += weight[f] - weight[e]
            load[m] += weight[e] - weight[f]
    return nodes


def _fitting_lpt(
    loads: Loads, order: list[int], extra: int, cluster: Cluster
) -> tuple[list[list[int]], NDArray[np.int64]]:
    """LPT with `extra` redundant replicas, or the most that LPT fits below it: with uneven
    slots, replicas of one expert may not find distinct nodes (one each always does)."""
    for fewer in range(extra, -1, -1):
        counts = _replica_counts(loads, order, fewer)
        try:
            return lpt_pack(loads, counts, cluster), counts
        except ReplicasDoNotFit:
            continue
    raise ReplicasDoNotFit("experts do not fit", field="slots_per_node")


def place(loads: Loads, cluster: Cluster, method: str = "auto") -> Placement:
    """Replicate and pack `loads` (token counts per expert) onto `cluster`."""
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}", field="method", allowed=METHODS)
    loads = np.asarray(loads, dtype=np.float64)
    _check_fits(loads, cluster)
    max_replicas = sum(1 for s in cluster.slots if s > 0)
    order = replication_order(loads, cluster.total_slots - loads.size, max_replicas)
    candidates = sorted({round(k) for k in np.linspace(0, len(order), REPLICA_CANDIDATES)})
    best: tuple[float, list[list[int]], NDArray[np.int64]] | None = None
    for extra in candidates:
        nodes, counts = _fitting_lpt(loads, order, extra, cluster)
        weight = loads / counts
        nodes = improve(nodes, weight, cluster.slots)
        score = imbalance(np.array([weight[n].sum() for n in nodes]))
        if best is None or score < best[0] - 1e-12:
            best = (score, nodes, counts)
    assert best is not None
    score, nodes, counts = best
    used = "greedy"
    if method == "milp" or (method == "auto" and loads.size * cluster.nodes <= MILP_MAX_VARIABLES):
        from trifecta.generative.placement_milp import milp_pack

        exact = milp_pack(loads, counts, cluster, MILP_TIME_LIMIT_S)
        weight = loads / counts
        if exact is not None and imbalance(np.array([weight[n].sum() for n in exact])) < score:
            nodes, used = exact, "milp"
    return Placement(cluster=cluster, num_experts=loads.size, nodes=nodes, method=used)


def eplb_greedy(loads: Loads, cluster: Cluster) -> Placement:
    """The from-scratch baseline, EPLB-style: every slot filled by water-filling replication,
    then LPT packing, no local search and no regard for any current placement."""
    loads = np.asarray(loads, dtype=np.float64)
    _check_fits(loads, cluster)
    max_replicas = sum(1 for s in cluster.slots if s > 0)
    order = replication_order(loads, cluster.total_slots - loads.size, max_replicas)
    nodes, _ = _fitting_lpt(loads, order, len(order), cluster)
    return Placement(cluster=cluster, num_experts=loads.size, nodes=nodes, method="eplb-greedy")


def round_robin(num_experts: int, cluster: Cluster) -> Placement:
    """Plain expert parallelism: expert e on the next node with a free slot, no replicas."""
    if cluster.total_slots < num_experts:
        raise InvalidInput(
            f"{cluster.total_slots} slots cannot hold {num_experts} experts",
            field="slots_per_node",
        )
    nodes: list[list[int]] = [[] for _ in cluster.slots]
    node = 0
    for e in range(num_experts):
        while len(nodes[node]) >= cluster.slots[node]:
            node = (node + 1) % cluster.nodes
        nodes[node].append(e)
        node = (node + 1) % cluster.nodes
    return Placement(cluster=cluster, num_experts=num_experts, nodes=nodes, method="round-robin")


def moves_between(old: Sequence[set[int]], new: Sequence[Sequence[int]]) -> int:
    """Replicas in `new` that their node did not already hold in `old` (node by node)."""
    return sum(
        len(set(experts) - (old[n] if n < len(old) else set())) for n, experts in enumerate(new)
    )


def aligned(
    fresh: Sequence[Sequence[int]], old: Sequence[set[int]], slots: Sequence[int]
) -> list[list[int]]:
    """Give the node lists of a fresh placement to the physical nodes that already hold the
    most of them (an optimal assignment), so every expert that can stay put does."""
    from scipy.optimize import linear_sum_assignment

    overlap = np.array([[len(set(new) & held) for held in old] for new in fresh])
    fits = np.array([[len(new) <= size for size in slots] for new in fresh])
    rows, cols = linear_sum_assignment(np.where(fits, -overlap, 10**6))
    nodes: list[list[int]] = [[] for _ in slots]
    for r, c in zip(rows, cols, strict=True):
        nodes[c] = list(fresh[r])
    return nodes


class ScratchRepack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    placement: Placement
    moves: int
    imbalance: float


def from_scratch(
    current: Placement, loads: Loads, cluster: Cluster, remove: Sequence[int] = ()
) -> ScratchRepack:
    """The EPLB-style baseline: repack from scratch on the new cluster, then give its node
    lists to the physical nodes that already hold the most of them (an optimal assignment,
    so the baseline keeps every expert that can stay put) and count the moves."""
    fresh = eplb_greedy(np.asarray(loads, dtype=np.float64), cluster)
    kept = [n for n in range(current.cluster.nodes) if n not in set(remove)]
    old = [set(current.nodes[n]) for n in kept] + [set() for _ in range(cluster.nodes - len(kept))]
    nodes = aligned(fresh.nodes, old, cluster.slots)
    placement = Placement(
        cluster=cluster, num_experts=current.num_experts, nodes=nodes, method="eplb-greedy"
    )
    return ScratchRepack(
        placement=placement, moves=moves_between(old, nodes), imbalance=placement.imbalance(loads)
    )
