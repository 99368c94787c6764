"""The recipe is seeded: the same config gives the same weights; the objective is LLaDA's."""

from __future__ import annotations

import torch

from trifecta.core.tasks import make_task
from trifecta.core.tokenizer import CharTokenizer
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
    bias = result.model.layers[0].moe.selection_bias
    # DeepSeek-V3's rule moves every expert by exactly +-rate (or 0) per step
    assert float(bias.abs().max()) <= 0.04 + 1e-6 and float(bias.abs().sum()) > 0


def test_the_loss_only_reads_masked_response_positions(converted) -> None:
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


def test_a_continued_stage_starts_from_the_saved_model(shipped) -> None:
    model = initial_model(TrainConfig(continue_from="diffusion-moe.safetensors"))
    theirs = shipped.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
