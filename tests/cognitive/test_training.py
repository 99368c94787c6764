"""The training recipe: seeded, growth preserves the smaller tier's function, a smoke run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from trifecta.cognitive.backends import HuggingFaceBackend
from trifecta.cognitive.checkpoints import build_tokenizer, load_checkpoint, tier_vocabulary
from trifecta.cognitive.growth import grow
from trifecta.cognitive.scratchpad import worked_answer
from trifecta.cognitive.tiers import TIERS, load_tier
from trifecta.cognitive.training import (
    REFINE_MIX,
    recipe,
    sequence_loss,
    train_tier,
    training_batches,
)
from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import generate_tasks, split_of


def test_training_batches_are_seeded_train_split_worked_answers() -> None:
    first = next(training_batches(5, 16))
    again = next(training_batches(5, 16))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    chars = tier_vocabulary()
    ids, answer_mask = first
    for row, mask in zip(ids.tolist(), answer_mask.tolist(), strict=True):
        text = chars.decode(row)
        prompt = text[: text.index("?") + 1]
        assert split_of(prompt) == "train"
        answer = [t for t, m in zip(row, mask, strict=True) if m]
        assert answer[-1] == chars.eos_id  # the answer and the end token, nothing else
        assert chars.decode(answer) == text[len(prompt) :] == worked_answer(prompt)


def test_sequence_loss_weighs_answer_and_prompt() -> None:
    ids, answer_mask = next(training_batches(6, 8))
    vocab_size = tier_vocabulary().vocab_size
    logits = torch.zeros(*ids.shape, vocab_size)  # uniform predictions
    uniform = torch.log(torch.tensor(float(vocab_size)))
    assert sequence_loss(logits, ids, answer_mask, 0.0) == pytest.approx(float(uniform), abs=1e-5)
    assert sequence_loss(logits, ids, answer_mask, 0.5) == pytest.approx(
        1.5 * float(uniform), abs=1e-5
    )


def test_growth_keeps_what_the_smaller_tier_computes() -> None:
    small, _ = load_tier("small")
    grown = grow(small, TIERS["medium"], seed=1).eval()
    assert sum(p.numel() for p in grown.parameters()) > 3 * sum(
        p.numel() for p in small.parameters()
    )
    prompts = [t.prompt for t in generate_tasks(16, seed=2, split="heldout")]
    tokenizer = build_tokenizer()
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        a = small(**batch).logits
        b = grown(**batch).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(a[mask], b[mask], atol=1e-4)
    x = HuggingFaceBackend(small, tokenizer, name="small").generate(prompts, max_new_tokens=5)
    y = HuggingFaceBackend(grown, tokenizer, name="grown").generate(prompts, max_new_tokens=5)
    assert [g.text for g in x] == [g.text for g in y]


def test_growth_refuses_a_smaller_or_misshapen_target() -> None:
    medium, _ = load_tier("medium")
    with pytest.raises(InvalidInput, match="not larger"):
        grow(medium, TIERS["small"])
    odd = dataclasses.replace(TIERS["large"], heads=TIERS["large"].heads + 1)
    with pytest.raises(InvalidInput, match="head width"):
        grow(medium, odd)


def test_a_seconds_long_run_of_the_recipe(tmp_path: Path) -> None:
    spec = dataclasses.replace(TIERS["small"], batch_size=16)
    first = train_tier(spec, seed=3, steps=4, directory=tmp_path / "small", eval_per_grade=5)
    second = train_tier(spec, seed=3, steps=4, eval_per_grade=0)
    assert first.final_loss == pytest.approx(second.final_loss)  # seeded
    record = json.loads((tmp_path / "small" / "training.json").read_text())
    assert record["steps"] == 4 and set(record["heldout_accuracy"]) == {"1", "2", "3", "4", "5"}
    model, _ = load_checkpoint(tmp_path / "small")
    assert next(model.parameters()).dtype == torch.float32
    grown = train_tier(
        dataclasses.replace(TIERS["medium"], batch_size=16),
        seed=3,
        steps=2,
        grow_from=model,
        eval_per_grade=0,
        directory=tmp_path / "medium",
    )
    assert grown.grown_from and (tmp_path / "medium" / "model.safetensors").is_file()
    with pytest.raises(InvalidInput, match="steps"):
        train_tier(spec, steps=0)


def test_the_recipe_ends_with_the_refine_phase_and_a_warm_start_runs_only_it(
    tmp_path: Path,
) -> None:
    spec = dataclasses.replace(TIERS["small"], batch_size=16, refine_steps=3)
    phases = recipe(spec, 10, grown=False, warm=False)
    assert [p.steps for p in phases] == [5, 5, 3]  # look-ups capped at half the main steps
    assert phases[0].mix == {1: 1.0} and phases[-1].mix == REFINE_MIX
    assert [p.steps for p in recipe(spec, 10, grown=True, warm=False)] == [0, 10, 3]
    assert [p.steps for p in recipe(spec, 10, grown=False, warm=True)] == [3]
    # a continuation's own mix and rate (`models train --refine-mix --refine-lr`)
    (continued,) = recipe(
        spec, 10, grown=False, warm=True, refine_mix={1: 4.0, 5: 1.0}, refine_learning_rate=1e-4
    )
    assert continued.mix == {1: 4.0, 5: 1.0} and continued.learning_rate == 1e-4
    seen: list[int] = []
    first = train_tier(spec, seed=3, steps=2, eval_per_grade=0)
    before = [p.detach().clone() for p in first.model.parameters()]
    again = train_tier(
        spec,
        seed=3,
        warm_start=first.model,
        earlier=first.record(),
        eval_per_grade=0,
        directory=tmp_path / "small",
        on_step=lambda step, _loss: seen.append(step),
    )
    assert seen == [1, 2, 3]  # the refine phase only
    assert any(not torch.equal(a, b) for a, b in zip(before, again.model.parameters(), strict=True))
    record = json.loads((tmp_path / "small" / "training.json").read_text())
    assert record["steps"] == 2 + 3 + 3 and record["refine_steps"] == 3
    assert record["warm_start"]["steps"] == 5
