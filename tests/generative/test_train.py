"""The recipe is seeded: the same config gives the same weights; the objective is LLaDA's."""

from __future__ import annotations

import torch

from trifecta.core.tasks import make_task
from trifecta.core.tokenizer import CharTokenizer
from trifecta.generative.model import DiffusionLM
from trifecta.generative.train import (
    TrainConfig,
    initial_model,
    masked_diffusion_loss,
    prompt_batches,
    train,
)


def test_the_same_recipe_gives_the_same_weights() -> None:
    config = TrainConfig(steps=3, batch_size=8, warmup_steps=2)
    first = train(config).model.state_dict()
    second = train(config).model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = train(config.model_copy(update={"seed": 1})).model.state_dict()
    assert not torch.equal(first["layers.0.moe.router.weight"], other["layers.0.moe.router.weight"])


def test_training_moves_the_selection_bias_towards_balance() -> None:
    result = train(TrainConfig(steps=4, batch_size=8, warmup_steps=2, balance_rate=0.01))
    bias = result.model.blocks()[0].moe.selection_bias
    # DeepSeek-V3's rule moves every expert by exactly +-rate (or 0) per step
    assert float(bias.abs().max()) <= 0.04 + 1e-6 and float(bias.abs().sum()) > 0


def test_the_loss_only_reads_masked_response_positions(converted: DiffusionLM) -> None:
    prompts = ["41+17?", "t=4,p=17,r=63;p+t?"]
    g = torch.Generator().manual_seed(0)
    loss = masked_diffusion_loss(converted, prompts, CharTokenizer(), 20, g)
    assert loss.item() > 0 and loss.requires_grad


def test_a_look_up_first_curriculum_opens_with_look_ups_alone() -> None:
    config = TrainConfig(steps=6, batch_size=16, lookup_share=0.5)
    batches = list(prompt_batches(config))
    assert len(batches) == 6
    kinds = [{make_task(p).difficulty for p in batch} for batch in batches]
    assert all(k == {1} for k in kinds[:3])  # look-ups alone first
    assert set().union(*kinds[3:]) - {1}  # then the mix
    # Without it, the recipe's batches are what they always were.
    plain = TrainConfig(steps=2, batch_size=16)
    assert list(prompt_batches(plain)) == list(prompt_batches(plain.model_copy()))


def test_a_continued_stage_starts_from_the_saved_model(shipped: DiffusionLM) -> None:
    model = initial_model(TrainConfig(continue_from="diffusion-moe.safetensors"))
    theirs = shipped.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


def test_blockwise_rows_are_masked_as_block_decoding_meets_them() -> None:
    from trifecta.generative.train import draw_masks

    g = torch.Generator().manual_seed(0)
    masked, counted, t = draw_masks(400, 24, g, block_mask_share=0.5, block_length=4)
    blockwise = counted.sum(dim=1) < 24
    assert 120 < int(blockwise.sum()) < 280  # about half the rows
    for row in torch.nonzero(blockwise).flatten().tolist():
        window = torch.nonzero(counted[row]).flatten()
        cut, end = int(window[0]), int(window[-1]) + 1
        assert end - cut == min(4, 24 - cut)  # one contiguous window of the block length
        assert not masked[row, :cut].any()  # clean before it
        assert masked[row, end:].all()  # every later position masked
        assert masked[row, cut:end].any()  # something to learn inside it
    # uniform rows: every position read, at least one masked
    assert counted[~blockwise].all() and masked[~blockwise].any(dim=1).all()
    assert ((t > 0) & (t <= 1)).all()


def test_expert_dropout_keeps_between_top_k_and_all_but_one_per_layer() -> None:
    from trifecta.generative.train import random_expert_mask

    g = torch.Generator().manual_seed(0)
    kept = [random_expert_mask(2, 8, 2, g).sum(dim=1) for _ in range(200)]
    counts = torch.stack(kept)  # (200, layers)
    assert int(counts.min()) == 2 and int(counts.max()) == 7
    assert set(counts.flatten().tolist()) == set(range(2, 8))  # every size drawn


def test_steps_under_expert_dropout_leave_the_balancing_bias_alone() -> None:
    """A masked expert's zero load is not an imbalance: those steps skip the bias update."""
    config = TrainConfig(steps=3, batch_size=8, warmup_steps=1, balance_rate=0.01)
    dropped = train(config.model_copy(update={"expert_dropout": 1.0})).model
    assert all(float(b.moe.selection_bias.abs().sum()) == 0 for b in dropped.blocks())
    plain = train(config).model
    assert any(float(b.moe.selection_bias.abs().sum()) > 0 for b in plain.blocks())


def test_a_shifted_model_reads_each_token_off_the_position_before() -> None:
    """With `shift`, the converted model's first response prediction is the AR source's
    next-token prediction after the prompt: conversion starts from what the source knows."""
    from trifecta.generative.sequences import encode_targets

    config = TrainConfig(source="ar-small-canon", style="named", gen_length=24, shift=True)
    model = initial_model(config).eval()
    model.causal = True  # the AR source's view: the prompt alone decides the first token
    prompts = ["p=17,t=4;p?", "k=52,b=8,q=30;b?", "41+17?"]
    batch, targets = encode_targets(prompts, CharTokenizer(), 24, 64, "named")
    with torch.no_grad():
        logits, _ = model(batch.ids, batch.positions, batch.valid)
    # the small tier answers look-ups and sums directly, as the named style does
    first = logits[:, batch.start - 1].argmax(dim=-1)
    assert first.tolist() == targets[:, 0].tolist()  # '1', '8', '5'
    assert first.tolist() != logits[:, batch.start].argmax(dim=-1).tolist()


def test_the_medium_source_already_writes_the_operands_direct_scratchpad() -> None:
    """`operands_direct` is the medium tier's own style: converted (virtual groups, top-4) and
    read causally, the tier writes these scratchpads token for token under teacher forcing."""
    from trifecta.generative.sequences import encode_targets, scratchpad

    assert scratchpad("t=41,p=17,r=63;t+r-p?", "operands_direct") == "41+63=104-17=87"
    assert scratchpad("41+17?", "operands_direct") == "58"  # answered directly
    assert scratchpad("41+17-23?", "operands_direct") == "41+17=58-23=35"
    config = TrainConfig(
        source="ar-medium-canon", n_experts=8, top_k=4, granularity=4, gen_length=24, shift=True
    )
    model = initial_model(config).eval()
    model.causal = True
    prompts = ["p=17,t=4;p?", "41+17?", "k=52,b=8,q=30;b+q?", "41+17-23?"]
    batch, targets = encode_targets(prompts, CharTokenizer(), 24, 64, "operands_direct")
    with torch.no_grad():
        logits, _ = model(batch.ids, batch.positions, batch.valid)
    predicted = logits[:, batch.start - 1 : batch.start + 23].argmax(dim=-1)  # (B, 24)
    for row, prompt in enumerate(prompts):
        n = len(scratchpad(prompt, "operands_direct")) + 1  # the scratchpad and its <eos>
        assert predicted[row, :n].tolist() == targets[row, :n].tolist(), prompt
