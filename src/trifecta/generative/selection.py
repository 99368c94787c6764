"""Per-capsule selective activation: which experts a capsule's requests may use.

A mask holds, for each MoE layer, the experts that layer may route to; the router picks the
top-k among those only, and the others are never called (`model.MoE`). A mask is configured
(expert ids, the same for every layer, or per layer) or learned, by one of two rules:

- `learn_mask` (traffic share): per layer, the fewest experts that together took `coverage`
  of its routed tokens (at least top-k of them, so every token still gets k experts).
- `verified_mask` (the product's default): an expert is dropped only if the answers the full
  model got right stay right without it. Traffic share alone misjudges experts: these experts
  were upcycled from one dense FFN, so when a masked expert's tokens go to their next choice
  what they lose is how much the two experts *differ* on those tokens, not how many tokens
  there were. On the previous shipped model (small tier), one capsule's least-used expert
  of layer 0 (10% of its tokens) carried 10 of its 218 verified successes, while the
  most-used expert of layer 1 (21%) carried none (`docs/generative.md`). On a fine-grained
  model an expert is a shard of the FFN, and dropping both copies of a shard loses those
  hidden units outright. So traffic only orders the candidates (least
  used first) and a check of verified successes decides.
- `half_mask` (a configured size, no check): half of each layer's experts chosen by traffic.
  On a fine-grained model it keeps, for each shard, its most-used copies, so every hidden
  unit of the dense FFN stays (the most-used half alone dropped two shards of four in two of
  the shipped model's three layers and cost 55 points, `docs/generative.md`).
- `merge_plan` (MC-SMoE's "merge, then compress", Li et al. 2023): a dropped expert need not
  be lost. Each one joins the kept expert whose router row is most alike (on a fine-grained
  model: the kept copy of its shard, the only one whose hidden units line up with its own),
  and each kept expert becomes its group's usage-weighted average, weights and router row.
  `half_mask(..., router=...)` carries this plan; the layer then computes the merged experts
  where it computed the kept ones (`model.MoE`), at the same cost per token.
- `checked_half_mask` (the same size, checked): `half_mask`'s choice, then each kept expert
  swapped for another copy of its shard where that keeps more of the full model's verified
  successes (`mask_check`); traffic share alone does not see which copy a capsule needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import InvalidInput


class ExpertMask(BaseModel):
    """The experts each layer may use (layer i -> sorted expert ids)."""

    model_config = ConfigDict(frozen=True)

    layers: list[list[int]] = Field(min_length=1)
    source: str = Field(default="configured", description="configured | learned")
    # (n_layers, E, E): row k of a layer holds the weights of the experts merged into kept
    # expert k (summing to 1; expert k alone: no merge), zero rows for dropped experts.
    merge: list[list[list[float]]] | None = None

    def validate_for(self, n_layers: int, n_experts: int, top_k: int) -> None:
        """Refuse a mask this model cannot use, naming the field."""
        if len(self.layers) != n_layers:
            raise InvalidInput(
                f"{len(self.layers)} layers given, the model has {n_layers}", field="experts"
            )
        for layer in self.layers:
            bad = [e for e in layer if not 0 <= e < n_experts]
            if bad:
                raise InvalidInput(
                    f"expert {bad[0]} does not exist (the model has {n_experts}: 0-"
                    f"{n_experts - 1})",
                    field="experts",
                )
            if len(set(layer)) < top_k:
                raise InvalidInput(
                    f"a layer needs at least top_k={top_k} active experts, got {len(set(layer))}",
                    field="experts",
                )
        if self.merge is not None:
            self._validate_merge(n_experts)

    def _validate_merge(self, n_experts: int) -> None:
        assert self.merge is not None
        table = torch.tensor(self.merge, dtype=torch.float32)
        if table.shape != (len(self.layers), n_experts, n_experts):
            raise InvalidInput(
                f"merge must be (layers, experts, experts) = ({len(self.layers)}, {n_experts}, "
                f"{n_experts}), got {tuple(table.shape)}",
                field="merge",
            )
        if bool((table < 0).any()):
            raise InvalidInput("merge weights must not be negative", field="merge")
        active = self.active(n_experts)
        sums = table.sum(dim=2)  # (n_layers, E)
        if bool(((sums - 1).abs() > 1e-3)[active].any()):
            raise InvalidInput("each kept expert's merge weights must sum to 1", field="merge")
        if bool((sums[~active] != 0).any()):
            raise InvalidInput("a dropped expert cannot be merged into", field="merge")

    def merge_tensor(self) -> torch.Tensor | None:
        """(n_layers, E, E) float, or None: the kept experts are used as they are."""
        return None if self.merge is None else torch.tensor(self.merge, dtype=torch.float32)

    def active(self, n_experts: int) -> torch.Tensor:
        """(n_layers, E) bool."""
        table = torch.zeros((len(self.layers), n_experts), dtype=torch.bool)
        for i, layer in enumerate(self.layers):
            table[i, layer] = True
        return table

    def active_count(self) -> int:
        return sum(len(set(layer)) for layer in self.layers)


def configured_mask(experts: list[int], n_layers: int) -> ExpertMask:
    """The same experts in every layer."""
    return ExpertMask(layers=[sorted(set(experts))] * n_layers, source="configured")


def learn_mask(load: torch.Tensor, coverage: float, top_k: int) -> ExpertMask:
    """From per-layer routed-token counts (n_layers, E): per layer, the most used experts
    until their share of the tokens reaches `coverage` (at least `top_k` of them)."""
    if not 0 < coverage <= 1:
        raise InvalidInput(f"must be in (0, 1], got {coverage}", field="coverage")
    if float(load.sum()) <= 0:
        raise InvalidInput("the capsule has no recorded traffic to learn from", field="capsule")
    layers = []
    for row in load:
        order = torch.argsort(row, descending=True, stable=True)
        share = torch.cumsum(row[order], 0) / row.sum().clamp_min(1e-9)
        count = int((share < coverage - 1e-9).sum()) + 1  # experts needed to reach coverage
        layers.append(sorted(order[: max(count, top_k)].tolist()))
    return ExpertMask(layers=layers, source="learned")


def half_mask(
    load: torch.Tensor, granularity: int, top_k: int, router: torch.Tensor | None = None
) -> ExpertMask:
    """Half of each layer's experts from routed-token counts `load` (n_layers, E).

    `granularity` G: expert e is shard e % G of the FFN in virtual group e // G (`convert`).
    G = 1: the E/2 most used experts. G > 1: first each shard's most-used copy, so every
    shard stays, then the most used of the remaining copies up to E/2 (never fewer than G or
    top-k experts: with one group every shard has one copy and nothing can go).
    With the model's router weights `router` (n_layers, E, D) the dropped experts are merged
    into the kept ones (`merge_plan`); without, they are dropped."""
    n_experts = load.shape[1]
    if granularity < 1 or n_experts % granularity:
        raise InvalidInput(
            f"granularity {granularity} must divide the model's {n_experts} experts",
            field="granularity",
        )
    size = max(n_experts // 2, granularity if granularity > 1 else 1, top_k)
    layers = []
    for row in load:
        order = torch.argsort(row, descending=True, stable=True).tolist()  # most used first
        kept: list[int] = []
        if granularity > 1:
            covered: set[int] = set()
            for expert in order:  # each shard's most-used copy, in traffic order
                if expert % granularity not in covered:
                    covered.add(expert % granularity)
                    kept.append(expert)
        kept += [e for e in order if e not in kept][: size - len(kept)]
        layers.append(sorted(kept[:size]))
    mask = ExpertMask(layers=layers, source="configured")
    return mask if router is None else merge_plan(mask, load, granularity, router)


def merge_plan(
    mask: ExpertMask, load: torch.Tensor, granularity: int, router: torch.Tensor
) -> ExpertMask:
    """`mask` with its dropped experts merged into its kept ones (MC-SMoE, Li et al. 2023,
    "Merge, then Compress"): each dropped expert joins the kept expert whose router row
    (`router` (n_layers, E, D)) has the highest cosine similarity to its own, among the kept
    copies of its shard when `granularity` > 1 (another shard's hidden units do not line up
    with its own); each group is weighted by usage, the routed-token counts `load`
    (n_layers, E), uniformly where the group saw none. A dropped expert with no kept copy of
    its shard stays dropped."""
    n_layers, n_experts = load.shape
    if router.shape[:2] != (n_layers, n_experts):
        raise InvalidInput(
            f"router must be (layers, experts, d_model) with {n_layers} x {n_experts}, got "
            f"{tuple(router.shape)}",
            field="router",
        )
    if len(mask.layers) != n_layers:
        raise InvalidInput(f"{len(mask.layers)} layers, the load has {n_layers}", field="layers")
    unit = F.normalize(router.float(), dim=-1)
    table = torch.zeros((n_layers, n_experts, n_experts))
    for layer, kept in enumerate(mask.layers):
        members: dict[int, list[int]] = {k: [k] for k in kept}
        for dropped in (e for e in range(n_experts) if e not in kept):
            candidates = [
                k for k in kept if granularity <= 1 or k % granularity == dropped % granularity
            ]
            if candidates:
                similarity = unit[layer, candidates] @ unit[layer, dropped]
                members[candidates[int(similarity.argmax())]].append(dropped)
        for k, group in members.items():
            usage = load[layer, group].float()
            weights = usage / usage.sum() if float(usage.sum()) > 0 else torch.ones(len(group))
            table[layer, k, group] = weights / weights.sum()
    return mask.model_copy(update={"merge": table.tolist()})


def verified_mask(
    load: torch.Tensor,
    retained: Callable[[ExpertMask], float],
    top_k: int,
    tolerance: float,
    on_trial: Callable[[int, int, bool], None] | None = None,
) -> ExpertMask:
    """Drop experts one at a time, least routed first (`load` (n_layers, E) token counts),
    keeping a drop only while `retained(mask)`, the share of the reference successes the
    masked model still gets right, stays at least 1 - `tolerance`. Each check is on the
    whole mask so far, so the losses of several drops never add up past the tolerance.
    `on_trial(layer, expert, dropped)` reports each candidate (a progress bar's hook)."""
    if not 0 <= tolerance < 1:
        raise InvalidInput(f"must be in [0, 1), got {tolerance}", field="tolerance")
    if float(load.sum()) <= 0:
        raise InvalidInput("the capsule has no recorded traffic to learn from", field="capsule")
    n_layers, n_experts = load.shape
    share = load / load.sum(dim=1, keepdim=True).clamp_min(1e-9)
    order = torch.argsort(share.flatten(), stable=True).tolist()  # least routed first
    layers = [set(range(n_experts)) for _ in range(n_layers)]
    for flat in order:
        layer, expert = divmod(flat, n_experts)
        dropped = False
        if len(layers[layer]) > top_k:
            trial = [
                sorted(kept - {expert}) if i == layer else sorted(kept)
                for i, kept in enumerate(layers)
            ]
            if retained(ExpertMask(layers=trial, source="learned")) >= 1 - tolerance - 1e-9:
                layers[layer].discard(expert)
                dropped = True
        if on_trial is not None:
            on_trial(layer, expert, dropped)
    return ExpertMask(layers=[sorted(kept) for kept in layers], source="learned")


def checked_half_mask(
    start: ExpertMask,
    granularity: int,
    n_experts: int,
    retained: Callable[[ExpertMask, float], float],
) -> ExpertMask:
    """`start` (a half mask covering every shard once) improved one swap at a time: each kept
    expert, layer by layer, is swapped for another copy of its shard (expert e is shard
    e % `granularity`), and a swap is kept when `retained(mask, floor)` (the share of the
    reference successes the mask still answers right; it may stop early once the share
    cannot exceed `floor`) is higher than the best so far. Every shard stays covered and
    each layer keeps its size."""
    if granularity < 2 or n_experts % granularity:
        raise InvalidInput(
            f"a checked half mask needs shards: granularity {granularity} must be at least 2 "
            f"and divide {n_experts}",
            field="granularity",
        )
    layers = [list(layer) for layer in start.layers]
    best = retained(start, 0.0)
    for i, layer in enumerate(layers):
        for slot, expert in enumerate(list(layer)):
            copies = range(expert % granularity, n_experts, granularity)
            for other in [c for c in copies if c not in layer]:
                trial = [sorted(kept) for kept in layers]
                trial[i] = sorted([*layer[:slot], other, *layer[slot + 1 :]])
                share = retained(ExpertMask(layers=trial, source="learned"), best)
                if share > best + 1e-9:
                    best, layer[slot] = share, other
    return ExpertMask(layers=[sorted(layer) for layer in layers], source="learned")
