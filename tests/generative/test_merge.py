"""A half mask's dropped experts merged into its kept ones (MC-SMoE): the plan, the layer that
runs it, its persistence and the command that learns it."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from tests.support import run_cli
from trifecta.core.db import get_engine
from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import generate_tasks
from trifecta.core.tokenizer import CharTokenizer
from trifecta.generative.model import DiffusionLM, Routing
from trifecta.generative.selection import ExpertMask, half_mask, merge_plan
from trifecta.generative.sequences import encode_prompts
from trifecta.generative.store import GenerativeStore

LOAD = torch.tensor(
    [[1.0, 2.0, 9.0, 8.0, 3.0, 0.5, 7.0, 6.0], [5.0, 1.0, 1.0, 1.0, 4.0, 2.0, 3.0, 0.0]]
)


def _router(rows: int = 2, d_model: int = 6) -> torch.Tensor:
    return torch.randn((rows, 8, d_model), generator=torch.Generator().manual_seed(3))


def test_each_dropped_copy_merges_into_its_shards_kept_copy_by_usage() -> None:
    mask = half_mask(LOAD, granularity=4, top_k=4, router=_router())
    assert mask.layers == half_mask(LOAD, granularity=4, top_k=4).layers  # same selection
    table = mask.merge_tensor()
    assert table is not None and table.shape == (2, 8, 8)
    # layer 0 keeps [1, 2, 3, 4]: expert 1 (used 2) takes in copy 5 (used 0.5) of shard 1
    assert table[0, 1, 1] == pytest.approx(2 / 2.5) and table[0, 1, 5] == pytest.approx(0.5 / 2.5)
    assert table[0, 4, 0] == pytest.approx(1 / 4) and table[0, 4, 4] == pytest.approx(3 / 4)
    for layer, kept in enumerate(mask.layers):
        for k in kept:
            members = table[layer, k].nonzero().flatten().tolist()
            assert {e % 4 for e in members} == {k % 4}  # only copies of its own shard
        dropped = [e for e in range(8) if e not in kept]
        assert float(table[layer, dropped].abs().sum()) == 0  # nothing merges into a drop
        used = [e for e in dropped if LOAD[layer, e] > 0]  # an unused copy adds weight 0
        assert bool((table[layer][:, used] > 0).any(dim=0).all())  # each one merged in
    mask.validate_for(n_layers=2, n_experts=8, top_k=4)


def test_without_shards_a_dropped_expert_joins_the_kept_one_with_the_closest_router_row() -> None:
    router = torch.zeros((1, 8, 3))
    router[0, :, 0] = 1.0
    router[0, [5], 1] = 3.0  # expert 5 points where expert 2 does
    router[0, 2, 1] = 3.0
    load = torch.tensor([[1.0, 2.0, 9.0, 8.0, 3.0, 1.0, 7.0, 6.0]])
    mask = half_mask(load, granularity=1, top_k=2, router=router)
    table = mask.merge_tensor()
    assert mask.layers == [[2, 3, 6, 7]] and table is not None
    assert table[0, 2].nonzero().flatten().tolist() == [2, 5]  # expert 5 joined expert 2
    assert table[0, 2, 5] == pytest.approx(1 / 10)  # by usage: 1 of the group's 10
    uniform = merge_plan(mask, torch.zeros(1, 8), 1, router).merge_tensor()
    assert uniform is not None and uniform[0, 2, 5] == pytest.approx(0.5)  # unused group


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t[:, :4], "merge must be"),
        (lambda t: t * 2, "sum to 1"),
        (lambda t: t - 1, "negative"),
    ],
)
def test_a_bad_merge_plan_is_refused_naming_the_field(
    change: Callable[[torch.Tensor], torch.Tensor], message: str
) -> None:
    mask = half_mask(LOAD, granularity=4, top_k=4, router=_router())
    table = mask.merge_tensor()
    assert table is not None
    bad = mask.model_copy(update={"merge": change(table).tolist()})
    with pytest.raises(InvalidInput, match=message) as err:
        bad.validate_for(n_layers=2, n_experts=8, top_k=4)
    assert err.value.field == "merge"
    table[0, 0, 0] = 1.0  # expert 0 is dropped in layer 0: nothing may merge into it
    with pytest.raises(InvalidInput, match="dropped"):
        mask.model_copy(update={"merge": table.tolist()}).validate_for(2, 8, 4)
    with pytest.raises(InvalidInput) as err:
        merge_plan(mask, LOAD, 4, torch.zeros(3, 8, 6))
    assert err.value.field == "router"


def _merged_by_hand(model: DiffusionLM, mask: ExpertMask) -> DiffusionLM:
    """A copy of `model` whose kept experts hold their groups' averaged weights and router
    rows, written out expert by expert."""
    table = mask.merge_tensor()
    assert table is not None
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer, (block, source) in enumerate(zip(out.blocks(), model.blocks(), strict=True)):
            for k in mask.layers[layer]:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    total = sum(
                        float(table[layer, k, e]) * getattr(source.moe.experts[e], name).weight
                        for e in range(len(source.moe.experts))
                    )
                    getattr(block.moe.experts[k], name).weight.copy_(total)
                block.moe.router.weight[k] = table[layer, k] @ source.moe.router.weight
                block.moe.selection_bias[k] = table[layer, k] @ source.moe.selection_bias
    return out


@pytest.mark.parametrize("dense", [True, False])
def test_the_layer_computes_the_merged_experts_and_never_calls_a_dropped_one(
    shipped: DiffusionLM, dense: bool
) -> None:
    c = shipped.config
    load = torch.arange(c.n_layers * c.n_experts, dtype=torch.float32).view(c.n_layers, -1) + 1
    mask = half_mask(load, 4, c.top_k, shipped.router_weights())
    active, merge = mask.active(c.n_experts), mask.merge_tensor()
    prompts = [t.prompt for t in generate_tasks(8, seed=4, split="train")]
    batch = encode_prompts(prompts, CharTokenizer(), 24, c.block_size)
    by_hand = _merged_by_hand(shipped, mask)
    model = copy.deepcopy(shipped)
    for block in (*model.blocks(), *by_hand.blocks()):
        block.moe.dense = dense
    routing = Routing(active=active, merge=merge)
    with torch.no_grad():
        merged, _ = model(batch.ids, batch.positions, batch.valid, routing)
        expected, _ = by_hand(batch.ids, batch.positions, batch.valid, Routing(active=active))
        plain, _ = model(batch.ids, batch.positions, batch.valid, Routing(active=active))
    assert torch.allclose(merged, expected, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-3)  # the merge did change the layer
    kept = {(layer, e) for layer, experts in enumerate(mask.layers) for e in experts}
    assert routing.touched == kept  # no dropped expert was called
    assert model.prepare_mask(active, merge) > 0  # cached: built once per mask


def test_merge_plan_persists_and_is_served(sqlite_url: str, shipped: DiffusionLM) -> None:
    from trifecta.generative.service import GenerativeService

    c = shipped.config
    load = torch.ones(c.n_layers, c.n_experts)
    mask = half_mask(load, 4, c.top_k, shipped.router_weights())
    store = GenerativeStore(get_engine(sqlite_url))
    store.put_mask("c1", mask)
    again = GenerativeStore(get_engine(sqlite_url)).mask("c1")
    assert again == mask and again.merge is not None
    routing, _, _ = GenerativeService(shipped, store).routing_for("c1")
    planned = mask.merge_tensor()
    assert planned is not None, "a half mask with a router carries a merge plan"
    assert routing.merge is not None and torch.equal(routing.merge, planned)


def test_mask_learn_half_merges(capsys: pytest.CaptureFixture[str], shipped: DiffusionLM) -> None:
    c = shipped.config
    GenerativeStore().add_traffic("c-half", torch.rand(c.n_layers, c.n_experts) + 0.1, 3)
    code, out, _ = run_cli(["generative", "mask", "learn", "c-half", "--rule", "half"], capsys)
    assert code == 0 and "merged into a kept one" in " ".join(out.split())
    mask = GenerativeStore().mask("c-half")
    assert mask is not None and mask.merge is not None
    assert all(len(layer) == c.n_experts // 2 for layer in mask.layers)
    code, _, err = run_cli(["generative", "mask", "learn", "nobody", "--rule", "half"], capsys)
    assert code == 2 and "capsule:" in err
