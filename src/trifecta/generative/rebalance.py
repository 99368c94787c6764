"""The generative service's placement plans: each MoE layer's min-move rebalance
(`expansion.resize`) beside what a from-scratch repack would move, and which nodes a shrink
removes. Pure functions of the current placements and the measured loads; the service
(generative/service.py) and `trifecta generative placement|expand --apply` apply them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput
from trifecta.generative.placement import Placement
from trifecta.generative.settings import GenerativeSettings
from trifecta.generative.store import LayerMove


def check_node_change(
    nodes: int, add: int, remove: Sequence[int], settings: GenerativeSettings
) -> None:
    """Refuse a change of node count the settings do not allow, naming the field: a negative
    `add`, a `remove` naming a node the placement lacks (or one twice), or a count outside
    `min_nodes`..`max_nodes` after the change."""
    if add < 0:
        raise InvalidInput(f"must be >= 0, got {add}", field="add")
    unknown = sorted({n for n in remove if not 0 <= n < nodes})
    if unknown:
        raise InvalidInput(
            f"no node {unknown[0]}: the placement has {nodes} nodes (0-{nodes - 1})",
            field="remove",
        )
    if len(set(remove)) != len(remove):
        raise InvalidInput(f"names a node twice: {sorted(remove)}", field="remove")
    after = nodes + add - len(remove)
    if remove and after < settings.min_nodes:
        raise InvalidInput(
            f"would leave {after} nodes, below min_nodes ({settings.min_nodes})", field="remove"
        )
    if add and after > settings.max_nodes:
        raise InvalidInput(
            f"would make {after} nodes, above max_nodes ({settings.max_nodes})", field="add"
        )


def removable_nodes(placements: Sequence[Placement], count: int) -> list[int]:
    """The `count` nodes to remove from every layer: `expansion.nodes_to_remove`'s rule (the
    fewest experts left without a replica, so the fewest forced moves) summed over layers."""
    replicas = [p.replicas().copy() for p in placements]
    nodes = placements[0].cluster.nodes
    chosen: list[int] = []
    for _ in range(count):
        left = [n for n in range(nodes) if n not in chosen]
        orphans = [
            sum(int((r[p.nodes[n]] == 1).sum()) for p, r in zip(placements, replicas, strict=True))
            for n in left
        ]
        pick = left[int(np.argmin(orphans))]
        chosen.append(pick)
        for p, r in zip(placements, replicas, strict=True):
            r[p.nodes[pick]] -= 1
    return sorted(chosen)


def plan_rebalance(
    current: Sequence[Placement],
    loads: NDArray[np.float64],
    settings: GenerativeSettings,
    *,
    add: int = 0,
    remove: Sequence[int] = (),
    layers: Sequence[int] | None = None,
    loads_from: str = "traffic",
) -> tuple[list[Placement], list[LayerMove]]:
    """Each layer's min-move rebalance (`expansion.resize`) toward `rebalance_target` on its
    row of `loads` (n_layers, E), with `add` nodes added and `remove` removed, and beside it
    what an EPLB-style from-scratch repack would move. A layer outside `layers` keeps its
    placement (the same object) unless nodes change."""
    from trifecta.generative.expansion import resize
    from trifecta.generative.placement import from_scratch

    loads = np.asarray(loads, dtype=np.float64)
    n_experts = current[0].num_experts if current else 0
    if loads.shape != (len(current), n_experts):
        raise InvalidInput(
            f"expected {len(current)} x {n_experts} loads, got {loads.shape}", field="loads"
        )
    if add < 0:
        raise InvalidInput(f"must be >= 0, got {add}", field="add")
    chosen = set(range(len(current)) if layers is None else layers)
    bad = sorted(chosen - set(range(len(current))))
    if bad:
        raise InvalidInput(f"no MoE layer {bad[0]} (the model has {len(current)})", field="layers")
    new: list[Placement] = []
    report: list[LayerMove] = []
    for i, (placement, row) in enumerate(zip(current, loads, strict=True)):
        weights = row if row.sum() > 0 else np.ones(n_experts)
        if i not in chosen and not add and not remove:
            new.append(placement)
            ratio = placement.imbalance(weights)
            report.append(
                LayerMove(layer=i, loads_from=loads_from, before=ratio, after=ratio, moves=0)
            )
            continue
        result = resize(
            placement,
            weights,
            add=add,
            remove=list(remove),
            target=settings.rebalance_target,
            time_limit_s=settings.rebalance_time_limit_s,
            vary_counts=settings.rebalance_vary_counts,
        )
        scratch = from_scratch(placement, weights, result.placement.cluster, list(remove))
        new.append(result.placement)
        report.append(
            LayerMove(
                layer=i,
                loads_from=loads_from,
                before=placement.imbalance(weights),
                after=result.imbalance,
                moves=result.moves,
                scratch_moves=scratch.moves,
                scratch_after=scratch.imbalance,
            )
        )
    return new, report


def fits(
    layers: Sequence[Placement], n_layers: int, n_experts: int, slots: list[int] | None
) -> bool:
    """A placement per layer, of this many experts (and these node slots, when given)."""
    return len(layers) == n_layers and all(
        p.num_experts == n_experts and (slots is None or p.cluster.slots == slots) for p in layers
    )
