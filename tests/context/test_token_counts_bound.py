"""The token counts' bound (issue 16): `count_tokens` remembers at most `token_counts_kept`
counts, least recently asked dropped first, and keeps no text: it had kept every rendered
prompt it counted (an `lru_cache` of 65,536 texts, about 1 KB a task in a soak)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

import pytest

from trifecta.context import tokens
from trifecta.context.settings import ContextSettings
from trifecta.context.tokens import TokenCounts, count_tokens


def prompt(i: int) -> str:
    """A rendered prompt's size (about 2 KB) that no other `i` shares."""
    return "\n".join(
        f"- [m{i}-{j}] (worked) rule {j} of prompt {i}: keep the table." for j in range(30)
    )


def test_counts_stay_within_their_bound_least_recently_asked_first() -> None:
    counts = TokenCounts(kept=4)
    texts = [prompt(i) for i in range(6)]
    first = [counts.count(t) for t in texts[:4]]
    assert counts.count(texts[0]) == first[0]  # asked again: now the most recent
    counts.count(texts[4])
    assert counts.entries == 4
    assert (hash(texts[0]), len(texts[0])) in counts._counts  # kept
    assert (hash(texts[1]), len(texts[1])) not in counts._counts  # the least recent, dropped
    for i in range(6, 60):
        counts.count(prompt(i))
    assert counts.entries == counts.bound == 4
    assert counts.count(texts[1]) == first[1]  # a dropped count is counted again, the same


def test_an_entry_holds_no_text() -> None:
    counts = TokenCounts(kept=200)
    counts.count(prompt(-1))  # the tokenizer loaded before the measure
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200):
            counts.count(prompt(i))  # each prompt is freed once counted
        gc.collect()
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / 200
    finally:
        tracemalloc.stop()
    assert counts.entries == 200
    # A prompt is about 2 KB; an entry keeps its hash, length and count (about 0.17 KB alone;
    # other tests' threads still allocating under tracemalloc add up to ~0.15 KB here). An
    # entry that kept its text would cost the whole prompt at least.
    assert len(prompt(0)) > 1500
    assert per_entry < len(prompt(0)) / 4


def test_a_bound_of_zero_counts_without_remembering() -> None:
    counts = TokenCounts(kept=0)
    assert counts.count(prompt(1)) == counts.count(prompt(1)) > 0
    assert counts.entries == 0
    assert counts.count("") == 0


@pytest.fixture
def fresh_counts() -> Iterator[None]:
    tokens._counts = None
    yield
    tokens._counts = None


@pytest.mark.usefixtures("fresh_counts")
def test_the_setting_reaches_count_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ContextSettings().token_counts_kept == 8192
    monkeypatch.setenv("TRIFECTA_CONTEXT_TOKEN_COUNTS_KEPT", "3")
    for i in range(10):
        count_tokens(prompt(i))
    assert tokens._counts is not None and tokens._counts.entries == 3
    monkeypatch.setenv("TRIFECTA_CONTEXT_TOKEN_COUNTS_KEPT", "-1")
    with pytest.raises(ValueError, match="token_counts_kept"):
        ContextSettings()
