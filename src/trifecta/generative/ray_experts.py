"""Run a MoE layer's experts where a placement puts them: in-process by default, or as Ray
actors (one per placement node, pinned to a node of the Ray cluster) when a cluster is given.

`PlacedMoE` is the layer's `ExpertExecutor`: the layer routes as it always does (a capsule's
router biases, its expert mask and merged experts included, `model.MoE`) and hands the
routed tokens here; each chosen expert's tokens are split evenly over its replicas (the load
model the placement assumes), every node gets its batches at once, and the gated outputs are
added. An expert the mask leaves out is never chosen, so it is never sent to any node. Where
the mask merges dropped experts into a kept one, the kept expert's merged weights (the ones
the layer computes in process) are shipped once to the nodes that hold it, as a variant of
that expert keyed by its merge weights, and its tokens run there. It counts the tokens each
node served (`node_tokens`) and, per window, per node and per expert (`window`: the
per-expert counts are what an online rebalance places from). `apply` moves to a new
placement by shipping only the experts a node did not hold: the moves the expansion planner
counted.

`place_model` puts every MoE layer of a model on placed nodes (what the generative service
does when `expert_nodes` or `ray_address` is set in its settings), each layer from its own
measured load (`initial_placements`: the traffic recorded per expert; equal weights without
any). `PlacedMoE.window` is the load measured since the layer's last check, per node and per
expert: what the service's online rebalance reads. The nodes themselves (the replicas one
hosts, the in-process and Ray backends) are `expert_nodes`.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput
from trifecta.generative.expert_nodes import (
    Batches,
    LocalBackend,
    NodeBackend,
    NodeExperts,
    RayBackend,
    Variants,
    Weights,
    connect_ray,
)
from trifecta.generative.placement import Cluster, Placement, place

if TYPE_CHECKING:
    import torch

    from trifecta.generative.model import DiffusionLM, MaskedRouter, MoE, Routing
    from trifecta.generative.selection import ExpertMask

# Merged variants a node keeps (a few capsules' merged masks); the oldest go first.
MAX_VARIANTS_PER_NODE = 64


def expert_weights(moe: MoE) -> dict[int, Weights]:
    return {
        e: {k: v.detach().cpu().numpy().copy() for k, v in expert.state_dict().items()}
        for e, expert in enumerate(moe.experts)
    }


def _variant_tag(row: torch.Tensor) -> str:
    """A merged expert's name on a node: its merge weights (E,) as bytes, hashed."""
    return hashlib.blake2b(row.numpy().tobytes(), digest_size=8).hexdigest()


class PlacedMoE:
    """A MoE layer whose experts run on the nodes of a placement (the layer's
    `ExpertExecutor`: `attach` makes the model's own forward use it)."""

    def __init__(self, moe: MoE, placement: Placement, ray_address: str | None = None):
        if placement.num_experts != len(moe.experts):
            raise InvalidInput(
                f"placement has {placement.num_experts} experts, the layer {len(moe.experts)}",
                field="placement",
            )
        self.moe, self.placement = moe, placement
        self.weights = expert_weights(moe)
        d_ff, d_model = self.weights[0]["gate_proj.weight"].shape
        per_node = [{e: self.weights[e] for e in experts} for experts in placement.nodes]
        self.backend: NodeBackend
        if ray_address is None:
            self.backend = LocalBackend([NodeExperts(d_model, d_ff, w) for w in per_node])
        else:
            connect_ray(ray_address)
            self.backend = RayBackend(d_model, d_ff, per_node)
        self.node_tokens = np.zeros(placement.cluster.nodes, dtype=np.int64)
        # Routed tokens since the window began (`window`), per node and per expert.
        self.window_nodes = np.zeros(placement.cluster.nodes, dtype=np.int64)
        self.window_experts = np.zeros(placement.num_experts, dtype=np.int64)
        # The merged variants shipped to each node, oldest first (what the nodes hold).
        self.shipped: list[OrderedDict[tuple[int, str], None]] = [
            OrderedDict() for _ in placement.nodes
        ]
        self._tags: dict[bytes, Variants] = {}  # a merge plan's bytes -> its variants' tags

    def attach(self) -> None:
        """The layer's own forward (the model's, the decoder's) computes its experts here."""
        self.moe.executor = self

    def _holders(self) -> list[list[int]]:
        holders: list[list[int]] = [[] for _ in range(self.placement.num_experts)]
        for node, experts in enumerate(self.placement.nodes):
            for e in experts:
                holders[e].append(node)
        return holders

    def check_mask(self, experts: Sequence[int]) -> None:
        """Refuse a mask's experts (this layer's) that the placement does not hold."""
        lacking = sorted({int(e) for e in experts} - set(range(self.placement.num_experts)))
        if lacking:
            raise InvalidInput(
                f"layer {self.moe.layer}: expert {lacking[0]} is not placed (the placement "
                f"holds experts 0-{self.placement.num_experts - 1})",
                field="experts",
            )

    def forward(
        self,
        x: torch.Tensor,
        counted: torch.Tensor | None = None,
        routing: Routing | None = None,
    ) -> torch.Tensor:
        """(..., D) -> (..., D): the layer's output (with a capsule's `routing`: its biases,
        mask and merged experts) with every expert call made on the placed nodes."""
        import torch

        if routing is not None and routing.active is not None:
            self.check_mask(routing.active[self.moe.layer].nonzero().flatten().tolist())
            if routing.active.shape[-1] != self.placement.num_experts:
                raise InvalidInput(
                    f"the mask has {routing.active.shape[-1]} experts a layer, the placement "
                    f"{self.placement.num_experts}",
                    field="experts",
                )
        if counted is None:
            counted = torch.ones(x.shape[:-1], dtype=torch.bool)
        with torch.no_grad():
            return self.moe.forward(x, counted, routing, executor=self)

    def _variant_tags(self, masked: MaskedRouter | None, merge: torch.Tensor | None) -> Variants:
        """The kept experts a merge plan changes, each with its variant's tag (cached per
        plan: a forward pass only looks it up). An expert whose merge row is itself alone
        runs as it is."""
        if masked is None or merge is None:
            return {}
        key = merge.numpy().tobytes()
        tags = self._tags.get(key)
        if tags is None:
            tags = {}
            for e in masked.id_list:
                row = merge[e]
                if not (float(row[e]) == 1.0 and int((row != 0).sum()) == 1):
                    tags[e] = _variant_tag(row)
            if len(self._tags) >= MAX_VARIANTS_PER_NODE:  # a few capsules' plans at a time
                self._tags.clear()
            self._tags[key] = tags
        return tags

    def _ship_variants(self, node: int, needed: Variants, masked: MaskedRouter) -> None:
        """Ship the merged variants `node` needs and lacks (the weights the layer itself
        computes with under this mask); drop its oldest past the bound."""
        shipped = self.shipped[node]
        for e, tag in needed.items():
            key = (e, tag)
            if key in shipped:
                shipped.move_to_end(key)
                continue
            merged = masked.experts[masked.id_list.index(e)]
            state = {
                name: getattr(merged, part).detach().numpy().copy()
                for name, part in (
                    ("gate_proj.weight", "gate"),
                    ("up_proj.weight", "up"),
                    ("down_proj.weight", "down"),
                )
            }
            self.backend.load_variant(node, e, tag, state)
            shipped[key] = None
        in_use = set(needed.items())
        for key in list(shipped):
            if len(shipped) <= MAX_VARIANTS_PER_NODE:
                break
            if key not in in_use:
                self.backend.drop_variant(node, *key)
                del shipped[key]

    def compute(
        self,
        x: torch.Tensor,
        chosen: torch.Tensor,
        gates: torch.Tensor,
        masked: MaskedRouter | None,
        merge: torch.Tensor | None,
        routing: Routing | None,
    ) -> torch.Tensor:
        """The routed tokens x (n, D), their experts `chosen` (n, K) and `gates` (n, K), run
        on the placed nodes: (n, D), the gated sum of each token's experts."""
        import torch

        merged = self._variant_tags(masked, merge)
        holders = self._holders()
        per_node: list[Batches] = [{} for _ in self.placement.nodes]
        tags: list[Variants] = [{} for _ in per_node]
        sent: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in per_node]
        inputs = x.detach().numpy()
        for e in torch.unique(chosen).tolist():
            token, slot = torch.where(chosen == e)
            self.window_experts[e] += token.numel()
            # An even split over the replicas: the load model the placement balanced.
            for node, part in zip(
                holders[e], np.array_split(np.arange(token.numel()), len(holders[e])), strict=True
            ):
                if part.size:
                    per_node[node][e] = inputs[token[part].numpy()]
                    sent[node][e] = (token[part], slot[part])
                    self.node_tokens[node] += part.size
                    self.window_nodes[node] += part.size
                    if e in merged:
                        tags[node][e] = merged[e]
                    if routing is not None:
                        routing.calls += 1
                        routing.expert_tokens += int(part.size)
                        routing.touched.add((self.moe.layer, e))
        for node, needed in enumerate(tags):
            if needed and masked is not None:
                self._ship_variants(node, needed, masked)
        out = torch.zeros_like(x)
        for node, results in enumerate(self.backend.run(per_node, tags)):
            for e, y in results.items():
                token, slot = sent[node][e]
                out.index_add_(0, token, gates[token, slot, None] * torch.from_numpy(y))
        return out

    def prepare(self, mask: ExpertMask) -> int:
        """Ship a capsule's merged experts of this layer to the nodes that hold them before
        its first request (they are otherwise shipped by that request). Returns the variants
        shipped."""
        import torch

        layer = self.moe.layer
        if layer >= len(mask.layers):
            raise InvalidInput(
                f"the mask has {len(mask.layers)} layers, this is layer {layer}", field="experts"
            )
        self.check_mask(mask.layers[layer])
        merge = mask.merge_tensor()
        if merge is None:
            return 0
        active = mask.active(self.placement.num_experts)[layer]
        with torch.no_grad():
            masked = self.moe._masked_router(active, merge[layer])
        merged = self._variant_tags(masked, merge[layer])
        before = sum(len(s) for s in self.shipped)
        for node, experts in enumerate(self.placement.nodes):
            needed = {e: merged[e] for e in experts if e in merged}
            if needed:
                self._ship_variants(node, needed, masked)
        return sum(len(s) for s in self.shipped) - before

    def apply(self, placement: Placement, removed: Sequence[int] = ()) -> int:
        """Move to `placement` (as `expansion.resize` lays it out: the nodes not in `removed`
        in their order, then the added ones): ship the experts each node lacks, drop those it
        no longer hosts, then retire the removed nodes. Returns the experts shipped. Merged
        variants follow their expert: a node that drops an expert drops them, and a node that
        gains one is sent them when a request first needs them."""
        old_count = self.placement.cluster.nodes
        kept = [n for n in range(old_count) if n not in set(removed)]
        added = placement.cluster.nodes - len(kept)
        if added < 0 or any(not 0 <= n < old_count for n in removed):
            raise InvalidInput("does not match the nodes kept and added", field="placement")
        if placement.num_experts != self.placement.num_experts:
            raise InvalidInput(
                f"placement has {placement.num_experts} experts, the layer "
                f"{self.placement.num_experts}",
                field="placement",
            )
        for _ in range(added):
            self.backend.add_node()
            self.shipped.append(OrderedDict())
        backend_index = kept + list(range(old_count, old_count + added))
        hosts = self.placement.hosts()
        shipped = 0
        for node, new in enumerate(placement.hosts()):
            index = backend_index[node]
            old = hosts[index] if index < old_count else set()
            for e in sorted(new - old):  # ship first: an expert is never without a replica
                self.backend.load(index, e, self.weights[e])
                shipped += 1
            for e in sorted(old - new):
                self.backend.drop(index, e)
                for key in [k for k in self.shipped[index] if k[0] == e]:
                    del self.shipped[index][key]
        self.backend.remove_nodes(sorted(set(removed)))
        self.shipped = [s for i, s in enumerate(self.shipped) if i not in set(removed)]
        tokens = np.zeros(placement.cluster.nodes, dtype=np.int64)
        tokens[: len(kept)] = self.node_tokens[kept]
        self.placement, self.node_tokens = placement, tokens
        self.reset_window()  # the new placement's load is measured afresh
        return shipped

    def window(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Routed tokens since the window began: per node, and per expert (all replicas)."""
        return self.window_nodes.copy(), self.window_experts.copy()

    def reset_window(self) -> None:
        self.window_nodes = np.zeros(self.placement.cluster.nodes, dtype=np.int64)
        self.window_experts = np.zeros(self.placement.num_experts, dtype=np.int64)


def initial_placements(
    n_layers: int,
    n_experts: int,
    nodes: int,
    *,
    slots_per_node: int | None = None,
    loads: NDArray[np.float64] | None = None,
) -> list[Placement]:
    """One placement per MoE layer on `nodes` nodes of `slots_per_node` experts each
    (default: the fewest that hold every expert once), each from its layer's row of `loads`
    (n_layers, n_experts: routed tokens per expert), so the hottest experts get the
    redundant slots and are packed apart. A layer without load (no traffic yet) weighs every
    expert the same, which spreads them evenly."""
    if nodes < 1:
        raise InvalidInput(f"must be at least 1, got {nodes}", field="expert_nodes")
    slots = slots_per_node if slots_per_node is not None else math.ceil(n_experts / nodes)
    if slots * nodes < n_experts:
        raise InvalidInput(
            f"{nodes} nodes holding {slots} experts each cannot hold all {n_experts}",
            field="slots_per_node",
        )
    cluster = Cluster.uniform(nodes, slots)
    if loads is not None and np.asarray(loads).shape != (n_layers, n_experts):
        raise InvalidInput(
            f"expected {n_layers} x {n_experts} loads, got {np.asarray(loads).shape}",
            field="loads",
        )
    out = []
    for layer in range(n_layers):
        row = None if loads is None else np.asarray(loads[layer], dtype=np.float64)
        weights = row if row is not None and row.sum() > 0 else np.ones(n_experts)
        out.append(place(weights, cluster))
    return out


def place_model(
    model: DiffusionLM,
    nodes: int | Sequence[Placement],
    *,
    slots_per_node: int | None = None,
    ray_address: str | None = None,
    loads: NDArray[np.float64] | None = None,
) -> list[PlacedMoE]:
    """Every MoE layer of `model` on placement nodes (on the Ray cluster at `ray_address`,
    node n's actors pinned to its n-th node; in this process without one). `nodes`: a
    placement per layer, or a node count placed by `initial_placements` (from `loads`, per
    layer, or equal weights). The model's layers compute on the nodes from then on
    (`PlacedMoE.attach`)."""
    c = model.config
    if isinstance(nodes, int):
        placements = initial_placements(
            c.n_layers, c.n_experts, nodes, slots_per_node=slots_per_node, loads=loads
        )
    else:
        placements = list(nodes)
    if len(placements) != c.n_layers:
        raise InvalidInput(
            f"{len(placements)} placements for {c.n_layers} MoE layers", field="placement"
        )
    placed = []
    for block, placement in zip(model.blocks(), placements, strict=True):
        layer = PlacedMoE(block.moe, placement, ray_address=ray_address)
        layer.attach()
        placed.append(layer)
    return placed
