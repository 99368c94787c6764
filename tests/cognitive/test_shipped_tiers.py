"""The shipped tiers, as shipped (no retraining): a real ladder of skill on the hard grades,
small enough to ship, and the architecture and vocabulary the code expects."""

from __future__ import annotations

import json

import pytest

from trifecta.cognitive.canon_llama import CanonLlamaForCausalLM
from trifecta.cognitive.checkpoints import tier_vocabulary
from trifecta.cognitive.tiers import TIER_NAMES, TIERS, load_tier

HARD = (3, 4, 5)
LADDER_MARGIN = 0.05  # "clearly less": at least five points below the next tier up


def accuracy(tier: str) -> dict[int, float]:
    record = json.loads((TIERS[tier].directory / "training.json").read_text())
    return {int(grade): float(value) for grade, value in record["heldout_accuracy"].items()}


def test_the_large_tier_solves_every_hard_grade() -> None:
    large = accuracy("large")
    assert all(large[grade] >= 0.90 for grade in HARD), large


def test_every_tier_masters_the_light_grades_and_the_large_the_hard_ones_best() -> None:
    tiers = {name: accuracy(name) for name in TIER_NAMES}
    # Grade 1 at 85%: the large tier's grade-5 refine phase left its plain look-up at 84.0%;
    # a continuation weighted to grade 1 brought it back to 88.0% (docs/cognitive.md). The
    # edge answers grades 1-2.
    assert all(tiers[name][1] >= 0.85 and tiers[name][2] >= 0.85 for name in TIER_NAMES)
    for grade in HARD:
        assert tiers["large"][grade] == max(tier[grade] for tier in tiers.values())
    assert min(tiers["large"][g] for g in HARD) >= 0.90


@pytest.mark.parametrize(("lower", "upper"), [("small", "medium"), ("medium", "large")])
def test_each_tier_is_clearly_below_the_next_on_the_three_operand_grades(
    lower: str, upper: str
) -> None:
    below, above = accuracy(lower), accuracy(upper)
    for grade in (4, 5):
        assert below[grade] <= above[grade] - LADDER_MARGIN, (grade, below, above)


@pytest.mark.parametrize("tier", TIER_NAMES)
def test_a_shipped_tier_is_small_and_of_the_expected_kind(tier: str) -> None:
    directory = TIERS[tier].directory
    assert (directory / "model.safetensors").stat().st_size < 4_000_000
    record = json.loads((directory / "training.json").read_text())
    assert set(record["heldout_accuracy"]) == {"1", "2", "3", "4", "5"}
    model, tokenizer = load_tier(tier)
    assert isinstance(model, CanonLlamaForCausalLM)
    assert model.config.vocab_size == tier_vocabulary().vocab_size == len(tokenizer)
    assert tokenizer("What is 7*6?")["input_ids"] == tier_vocabulary().encode(
        "What is 7*6?", bos=True
    )
