"""Selective activation: masked experts are never read (their weights poisoned with NaN)."""

from __future__ import annotations

import copy
from typing import cast

import pytest
import torch

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import generate_tasks
from trifecta.core.tokenizer import CharTokenizer
from trifecta.generative.decoding import DecodeConfig, Decoder
from trifecta.generative.model import DiffusionLM, Expert, Routing
from trifecta.generative.selection import (
    ExpertMask,
    checked_half_mask,
    configured_mask,
    half_mask,
    learn_mask,
    verified_mask,
)
from trifecta.generative.sequences import encode_prompts

PROMPTS = [t.prompt for t in generate_tasks(16, seed=5, split="heldout")]


def _poisoned(model: DiffusionLM, active: torch.Tensor) -> DiffusionLM:
    """A copy of `model` whose experts outside `active` hold NaN weights: any read of them
    would reach the logits."""
    poisoned = copy.deepcopy(model)
    with torch.no_grad():
        for layer, block in enumerate(poisoned.blocks()):
            for e, expert in enumerate(block.moe.experts):
                if not active[layer, e]:
                    for weight in expert.parameters():
                        weight.fill_(float("nan"))
    return poisoned


def test_masked_experts_are_never_read(converted: DiffusionLM) -> None:
    mask = ExpertMask(layers=[[1, 4, 6], [0, 2]])
    active = mask.active(8)
    model = _poisoned(converted, active)
    batch = encode_prompts(PROMPTS, CharTokenizer(), 20, model.config.block_size)
    routing = Routing(active=active)
    with torch.no_grad():
        masked, _ = model(batch.ids, batch.positions, batch.valid, routing)
        every, _ = model(batch.ids, batch.positions, batch.valid)
    assert torch.isfinite(masked).all()  # no masked weight was read
    assert torch.isnan(every).any()  # ... and without the mask the poison does show
    allowed = {(0, 1), (0, 4), (0, 6), (1, 0), (1, 2)}
    assert routing.touched and routing.touched <= allowed
    results, _ = Decoder(model).decode(PROMPTS, DecodeConfig(), Routing(active=active))
    assert all(len(r.tokens) == DecodeConfig().gen_length for r in results)


def test_routing_reports_what_ran(converted: DiffusionLM) -> None:
    mask = configured_mask([0, 3, 5], 2)
    routing = Routing(active=mask.active(8))
    Decoder(converted).decode(PROMPTS, DecodeConfig(), routing)
    assert routing.touched <= {(layer, e) for layer in range(2) for e in (0, 3, 5)}
    assert routing.load is not None and float(routing.load[:, [1, 2, 4, 6, 7]].sum()) == 0
    # every counted token went to top_k experts
    assert float(routing.load.sum()) % converted.config.top_k == 0


def test_learned_mask_covers_the_requested_share() -> None:
    load = torch.tensor([[50.0, 30, 10, 5, 3, 2, 0, 0], [1.0] * 8])
    mask = learn_mask(load, 0.9, top_k=2)
    assert mask.layers[0] == [0, 1, 2]  # 50 + 30 + 10 = 90%
    assert len(mask.layers[1]) == 8  # a flat layer needs every expert for 90%
    assert learn_mask(load, 0.1, top_k=2).layers[0] == [0, 1]  # never below top_k


@pytest.mark.parametrize("layers", [[[0, 8], [0, 1]], [[0], [0, 1]], [[0, 1]], [[0, -1], [1, 2]]])
def test_impossible_masks_are_refused(layers: list[list[int]]) -> None:
    with pytest.raises(InvalidInput) as err:
        ExpertMask(layers=layers).validate_for(2, 8, 2)
    assert err.value.field == "experts"


def test_masked_router_routes_as_the_full_router_with_masked_scores(shipped: DiffusionLM) -> None:
    """The sliced router (only the active experts' rows) picks the experts and gates the full
    router would after setting masked scores to -inf, with a capsule's biases too."""
    c = shipped.config
    moe = shipped.blocks()[1].moe
    x = torch.randn(300, c.d_model, generator=torch.Generator().manual_seed(3))
    counted = torch.ones(300, dtype=torch.bool)
    # layer 1 keeps top-k + 2 experts; the other layers every expert
    layers = [list(range(c.n_experts))] * c.n_layers
    layers[1] = [1, 3, 4, 6, 7, 0][: c.top_k + 2]
    active = ExpertMask(layers=layers).active(c.n_experts)
    bias = torch.linspace(-0.2, 0.2, c.n_layers * c.n_experts).view(c.n_layers, c.n_experts)
    with torch.no_grad():
        ours = moe(x, counted, Routing(active=active, bias=bias))
        affinity = torch.sigmoid(moe.router(x))
        score = (affinity + moe.selection_bias + bias[1]).masked_fill(~active[1], float("-inf"))
        chosen = score.topk(c.top_k, dim=-1).indices
        gates = affinity.gather(1, chosen)
        gates = gates / gates.sum(dim=-1, keepdim=True)
        reference = torch.zeros_like(x)
        for slot in range(c.top_k):
            for e in chosen[:, slot].unique().tolist():
                rows = chosen[:, slot] == e
                reference[rows] += gates[rows, slot, None] * moe.experts[e](x[rows])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert len(moe._masked) >= 1  # the mask's router was cached for the next call


@pytest.mark.parametrize("extra", [0, 1])
def test_dense_path_computes_what_the_dispatch_does(shipped: DiffusionLM, extra: int) -> None:
    """A layer left top-k (+1) active experts runs them as one dense FFN: the same outputs,
    routed loads and per-request loads as dispatching each token to its experts, with
    padding and a capsule's biases; only the active experts' weights are stacked."""
    c = shipped.config
    moe = shipped.blocks()[2].moe
    x = torch.randn(120, c.d_model, generator=torch.Generator().manual_seed(4))
    counted = torch.ones(120, dtype=torch.bool)
    counted[::5] = False  # padding, never routed
    layers = [list(range(c.n_experts))] * c.n_layers
    layers[2] = [0, 2, 5, 7, 3, 6][: c.top_k + extra]
    active = ExpertMask(layers=layers).active(c.n_experts)
    bias = torch.linspace(-0.3, 0.3, c.n_layers * c.n_experts).view(c.n_layers, c.n_experts)
    outputs, routings = [], []
    try:
        for dense in (False, True):
            moe.dense = dense
            routing = Routing(
                active=active,
                bias=bias,
                load=torch.zeros(c.n_layers, c.n_experts),
                row_load=torch.zeros(4, c.n_layers, c.n_experts),
            )
            with torch.no_grad():
                outputs.append(moe(x, counted, routing))
            routings.append(routing)
    finally:
        moe.dense = True
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    by_dispatch, by_dense = routings
    assert by_dense.load is not None and by_dispatch.load is not None, "the forward fills load"
    assert by_dense.row_load is not None and by_dispatch.row_load is not None
    assert torch.equal(by_dense.load, by_dispatch.load)
    assert torch.equal(by_dense.row_load, by_dispatch.row_load)
    assert by_dense.touched == {(2, e) for e in layers[2]}  # only active experts
    stacked = moe._masked_router(active[2]).stacked
    assert stacked is not None and stacked.experts == c.top_k + extra
    assert stacked.w_in.shape == (2 * stacked.experts * c.d_ff, c.d_model)


def test_dense_weights_follow_an_update_of_the_experts(shipped: DiffusionLM) -> None:
    """The stacked weights are cached per mask and rebuilt when an expert's weights change."""
    model = copy.deepcopy(shipped)
    c = model.config
    moe = model.blocks()[0].moe
    active = configured_mask(list(range(c.top_k)), c.n_layers).active(c.n_experts)
    x = torch.randn(40, c.d_model, generator=torch.Generator().manual_seed(5))
    counted = torch.ones(40, dtype=torch.bool)
    with torch.no_grad():
        before = moe(x, counted, Routing(active=active))
        # an in-place update (an optimiser's)
        cast(Expert, moe.experts[1]).down_proj.weight.mul_(2.0)
        after = moe(x, counted, Routing(active=active))
        moe.dense = False
        dispatched = moe(x, counted, Routing(active=active))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, dispatched, rtol=1e-5, atol=1e-5)
    # a copy carries the cache along, and its fresh tensors restart their version counts
    moe.dense = True
    copied = copy.deepcopy(model).blocks()[0].moe
    with torch.no_grad():
        cast(Expert, copied.experts[2]).up_proj.weight.mul_(0.5)
        changed = copied(x, counted, Routing(active=active))
        copied.dense = False
        torch.testing.assert_close(changed, copied(x, counted, Routing(active=active)))
    assert not torch.allclose(changed, after)


def test_verified_rule_keeps_a_rarely_used_expert_that_carries_successes() -> None:
    """Expert 0 of layer 0 takes the fewest tokens yet losing it breaks answers; the busiest
    expert of layer 1 breaks nothing. The traffic rule drops the first; the verified one
    drops the second and keeps the first."""
    load = torch.tensor([[1.0, 10, 10, 10], [40.0, 5, 5, 5]])
    critical = (0, 0)
    tried: list[tuple[int, int, bool]] = []

    def retained(mask: ExpertMask) -> float:
        lost = 0.5 if critical[1] not in mask.layers[critical[0]] else 0.0
        lost += 0.004 * sum(4 - len(layer) for layer in mask.layers)  # every drop costs a bit
        return 1.0 - lost

    mask = verified_mask(
        load, retained, top_k=2, tolerance=0.01, on_trial=lambda *t: tried.append(t)
    )
    assert 0 not in learn_mask(load, 0.9, top_k=2).layers[0]  # the traffic rule drops it
    assert 0 in mask.layers[0]
    assert all(len(layer) >= 2 for layer in mask.layers)
    assert retained(mask) >= 0.99  # the tolerance bounds the whole mask, not each drop
    assert mask.active_count() == 6  # two drops of 0.004 fit in 0.01, a third would not
    assert len(tried) == 8 and tried[0][:2] == (0, 0)  # least routed share tried first


def test_success_check_on_the_shipped_model(shipped: DiffusionLM) -> None:
    from trifecta.generative.mask_check import learn_verified_mask

    mask, check = learn_verified_mask(
        Decoder(shipped), traffic=None, domain="energy", tolerance=0.05, check_tasks=20
    )
    c = shipped.config
    assert check.successes  # the shipped model answers some of its kind of tasks
    every = ExpertMask(layers=[list(range(c.n_experts))] * c.n_layers)
    assert check.retained(every) == 1.0  # decoding is deterministic: nothing lost
    assert check.retained(mask) >= 0.95
    mask.validate_for(c.n_layers, c.n_experts, c.top_k)


def test_half_mask_keeps_every_shard_on_a_fine_grained_model() -> None:
    # 8 experts = 2 groups x 4 shards (expert e is shard e % 4): the most-used half of layer 0
    # is [2, 3, 6, 7], both copies of shards 2 and 3 and neither of shards 0 and 1.
    load = torch.tensor(
        [[1.0, 2.0, 9.0, 8.0, 3.0, 0.5, 7.0, 6.0], [5.0, 1.0, 1.0, 1.0, 4.0, 2.0, 3.0, 0.0]]
    )
    mask = half_mask(load, granularity=4, top_k=4)
    assert mask.layers == [[1, 2, 3, 4], [0, 3, 5, 6]]  # per shard the more-used copy
    for layer in mask.layers:
        assert len(layer) == 4  # the asked size, E / 2
        assert {e % 4 for e in layer} == {0, 1, 2, 3}  # every shard covered
    mask.validate_for(n_layers=2, n_experts=8, top_k=4)
    # 2 shards x 4 groups: half is 4 experts, each shard's best copy first, then by traffic
    two = half_mask(load, granularity=2, top_k=2)
    assert two.layers[0] == [2, 3, 6, 7] and two.layers[1] == [0, 4, 5, 6]


def test_checked_half_mask_swaps_in_the_copy_the_successes_need() -> None:
    """Traffic picks shard 1's copy 1 in layer 0, but the successes need copy 5: the checked
    rule swaps it in, keeps every other traffic choice (no swap there keeps more), and every
    layer still covers each shard once."""
    load = torch.tensor(
        [[1.0, 2.0, 9.0, 8.0, 3.0, 0.5, 7.0, 6.0], [5.0, 1.0, 1.0, 1.0, 4.0, 2.0, 3.0, 0.0]]
    )
    start = half_mask(load, granularity=4, top_k=4)
    assert start.layers[0] == [1, 2, 3, 4]
    floors: list[float] = []

    def retained(mask: ExpertMask, floor: float) -> float:
        floors.append(floor)
        share = 0.9 if 5 in mask.layers[0] else 0.8
        return share - 0.05 * len(set(mask.layers[1]) - set(start.layers[1]))

    mask = checked_half_mask(start, granularity=4, n_experts=8, retained=retained)
    assert mask.layers == [[2, 3, 4, 5], start.layers[1]]
    assert all({e % 4 for e in layer} == {0, 1, 2, 3} for layer in mask.layers)
    assert len(floors) == 1 + 8  # the start, then one trial per kept expert
    assert floors[-1] == pytest.approx(0.9)  # later trials may stop below the best so far
    with pytest.raises(InvalidInput):
        checked_half_mask(start, granularity=1, n_experts=8, retained=retained)


def test_half_mask_without_shards_is_the_most_used_half() -> None:
    load = torch.tensor([[1.0, 2.0, 9.0, 8.0, 3.0, 0.5, 7.0, 6.0]])
    old_rule = sorted(load.argsort(dim=1, descending=True)[0, :4].tolist())
    assert half_mask(load, granularity=1, top_k=2).layers == [old_rule] == [[2, 3, 6, 7]]
    with pytest.raises(InvalidInput, match="granularity"):
        half_mask(load, granularity=3, top_k=2)


def test_a_failing_trial_stops_early_and_starts_with_what_broke_before(
    shipped: DiffusionLM,
) -> None:
    """A mask that drops two whole FFN shards breaks most successes: the trial stops after
    the first batch, and the successes it broke come first in the next trial."""
    from trifecta.generative.mask_check import FIRST_BATCH, SuccessCheck, reference_tasks

    c = shipped.config
    check = SuccessCheck(Decoder(shipped), reference_tasks(40, "energy"))
    n = len(check.successes)
    assert n > FIRST_BATCH  # the shipped model answers most of its kind of tasks
    every = ExpertMask(layers=[list(range(c.n_experts))] * c.n_layers)
    assert check.retained(every, floor=0.99) == 1.0 and check.decoded == n
    shards_missing = ExpertMask(layers=[[2, 3, 6, 7]] * c.n_layers)  # no copy of shards 0, 1
    share = check.retained(shards_missing, floor=0.99)
    assert share < 0.99 and check.decoded == n + FIRST_BATCH  # stopped after one batch
    broken = [i for i, count in enumerate(check.broken) if count]
    assert broken and check.lost == 0  # the passing mask (every expert) lost none
    first = sorted(range(n), key=lambda i: -check.broken[i])[: len(broken)]
    assert sorted(first) == broken  # what broke is decoded first next time


def test_loss_bound_is_the_exact_upper_bound() -> None:
    from scipy.stats import binomtest

    from trifecta.generative.mask_check import loss_bound

    assert loss_bound(0, 100) == pytest.approx(1 - 0.05**0.01)  # about 3/n, the rule of three
    for lost, n in ((0, 136), (1, 136), (5, 40)):
        exact = binomtest(lost, n, alternative="less").proportion_ci(confidence_level=0.95)
        assert loss_bound(lost, n) == pytest.approx(exact.high, rel=1e-6)
    assert loss_bound(0, 300) < loss_bound(0, 100) < loss_bound(1, 100)


def test_copy_choices_cover_every_shard_once() -> None:
    from trifecta.generative.mask_fit import copy_choices

    choices = list(copy_choices([1, 2, 3, 4], granularity=4, n_experts=8))
    assert len(choices) == 16  # two copies of each of 4 shards
    assert all(sorted({e % 4 for e in c}) == [0, 1, 2, 3] for c in choices)
    assert [0, 1, 2, 3] in choices and [4, 5, 6, 7] in choices


def test_fitted_half_mask_moves_closer_to_the_full_model(shipped: DiffusionLM) -> None:
    """Fitted from a deliberately poor start (every layer's second copies), the mask keeps a
    copy of every shard in every layer and its divergence from the full model falls."""
    from trifecta.generative.mask_fit import fitted_half_mask

    c = shipped.config
    start = ExpertMask(layers=[[4, 5, 6, 7]] * c.n_layers)
    prompts = [t.prompt for t in generate_tasks(12, seed=9, split="train")]
    mask, before, after = fitted_half_mask(Decoder(shipped), start, 4, prompts)
    assert 0 <= after < before
    assert all(sorted(e % 4 for e in layer) == [0, 1, 2, 3] for layer in mask.layers)
    mask.validate_for(c.n_layers, c.n_experts, c.top_k)


def test_router_biases_cannot_change_a_half_masked_layer(shipped: DiffusionLM) -> None:
    """The half mask keeps one copy per shard: top-k experts, so every token selects every
    active one, and biases (which steer selection only, never gates) change nothing: tuning
    a capsule's biases under that mask cannot move its accuracy."""
    c = shipped.config
    moe = shipped.blocks()[1].moe
    x = torch.randn(64, c.d_model, generator=torch.Generator().manual_seed(9))
    counted = torch.ones(64, dtype=torch.bool)
    load = torch.arange(c.n_layers * c.n_experts, dtype=torch.float32).view(c.n_layers, -1)
    mask = half_mask(load, granularity=4, top_k=c.top_k)
    assert all(len(layer) == c.top_k for layer in mask.layers)
    active = mask.active(c.n_experts)
    bias = torch.linspace(-0.25, 0.25, c.n_layers * c.n_experts).view(c.n_layers, -1)
    with torch.no_grad():
        plain, biased = (moe(x, counted, Routing(active=active, bias=b)) for b in (None, bias))
    assert torch.equal(plain, biased)
