"""A rendered prompt's token count is taken from its lines' remembered counts
(`tokens.count_joined`) rather than by tokenizing the new prompt whole: equal to the whole
prompt's count, for the bullets, the memories and the two together, at every budget."""

from __future__ import annotations

import random

import pytest

from trifecta.context import tokens
from trifecta.context.models import Bullet, MemoryHit, MemoryItem, MemorySource, RankedBullet
from trifecta.context.render import render_bullets, render_context, render_memories

# Accents, quotes, CJK, non-breaking and zero-width spaces, tabs, carriage returns: the
# normaliser and pre-tokenizer's edge cases, at line ends too.
ODD = [
    "naïve café",
    "“quoted” ‘x’ — dash",
    "中文字符",
    "a\u00a0b\u200bc",
    "tab\there",
    "x\r",
    "end.",
]


def whole(text: str) -> int:
    return tokens._count(text) if text else 0


def bullets(rng: random.Random, n: int) -> list[RankedBullet]:
    out = []
    for i in range(n):
        content = f"Rule {i}: check operand {rng.randint(0, 99)} first. {rng.choice(ODD)}"
        bullet = Bullet(
            id=f"b-{i:04d}",
            section=rng.choice(["strategies", "pitfalls", "routing", "checks"]),
            content=content,
            helpful=rng.randint(0, 9),
            harmful=rng.randint(0, 9),
            created_at=0.0,
            updated_at=0.0,
        )
        out.append(RankedBullet(bullet=bullet, score=rng.random()))
    return out


def hits(rng: random.Random, n: int) -> list[MemoryHit]:
    out = []
    for i in range(n):
        memory = MemoryItem(
            id=f"m-{i}",
            domain="d",
            title=f"Task {i} {rng.choice(ODD)}",
            description=rng.choice(["", "add two numbers", "a – b"]),
            content=f"step one\n  step two {rng.choice(ODD)}\n\nanswer {i}",
            outcome=rng.choice(["success", "failure"]),
            source=MemorySource(task_id=f"t-{i}"),
            created_at=0.0,
            updated_at=0.0,
        )
        out.append(MemoryHit(memory=memory, similarity=rng.random()))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_counts_equal_the_whole_prompts(seed: int) -> None:
    assert tokens.splits_at_whitespace()  # the shipped WordPiece tokenizer
    rng = random.Random(seed)
    ranked, found = bullets(rng, rng.randint(1, 40)), hits(rng, rng.randint(1, 5))
    for budget in (40, 120, 400, 1500):
        prompt, count, kept = render_bullets(ranked, budget)
        assert count == whole(prompt) <= budget
        assert len(kept) == (prompt.count("\n[b-") + prompt.startswith("[b-"))
        prompt, count, kept_hits = render_memories(found, budget)
        assert count == whole(prompt) <= budget
        assert len(kept_hits) == prompt.count("\n- [m-")
        prompt, count, _, _ = render_context(ranked, found, budget)
        assert count == whole(prompt) <= budget
        assert count > 0


def test_a_tokenizer_that_does_not_split_at_whitespace_counts_the_whole_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a token could span a line break, the prompt is counted as a whole."""
    asked: list[str] = []
    monkeypatch.setattr(tokens, "_splits", False)

    def counting(text: str) -> int:
        asked.append(text)
        return len(text)

    monkeypatch.setattr(tokens, "count_tokens", counting)
    assert tokens.count_joined(["ab", "cd"]) == len("ab\ncd")
    assert asked == ["ab\ncd"]
