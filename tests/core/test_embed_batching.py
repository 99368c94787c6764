"""Texts embedded together get the vectors they get alone (to 1e-5, float32), whatever the
batch: its size, its mix of lengths, the padding rows of its last chunk, or other threads
embedding at the same time (core/embeddings.py's chunk plan)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trifecta.core.embeddings import (
    FORWARD_TOKENS,
    LENGTH_BUCKETS,
    MAX_BATCH,
    PAD_BELOW,
    MiniLMEmbedder,
    chunk_plan,
    get_embedder,
)

# Query-like texts of 2 to ~60 tokens (the loop's prompts are 6-28), so batches mix buckets.
POOL = [
    "2+61?",
    "41+53?",
    "e=56,n=16,j=58;n?",
    "o=87,a=85,i=64,b=27,m=26;b+o+a?",
    "What is 17 + 25? Answer with the number only.",
    "Ünïcödé テキスト 😀",
    "Summarise the refund policy for a customer who paid twice " * 2,
    "x",
    "lookup_add solved via edge after 3 steps",
    "The quick brown fox jumps over the lazy dog.",
    "k=1,l=2,m=3,n=4,o=5,p=6,q=7,r=8;q+r+k?",
    "Why did the cascade escalate this request to the large tier?",
]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    # float32 weights, whatever the CPU: these are exact claims (the shipped bfloat16 path's
    # are tests/core/test_embed_precision.py).
    return get_embedder("float32")


@pytest.fixture(scope="module")
def alone(embedder: MiniLMEmbedder) -> dict[str, np.ndarray]:
    return {text: embedder.embed([text])[0] for text in POOL}


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(picks=st.lists(st.sampled_from(POOL), min_size=1, max_size=12))
def test_a_batch_equals_each_text_alone(
    embedder: MiniLMEmbedder, alone: dict[str, np.ndarray], picks: list[str]
) -> None:
    together = embedder.embed(picks)
    assert together.shape == (len(picks), embedder.dim)
    np.testing.assert_allclose(together, np.stack([alone[t] for t in picks]), atol=1e-5)


SHORT = ["2+61?", "41+53?", "x", "a b", "1+1?", "7*3?", "9-2?", "yes", "no", "3+3?", "0?"]
LONG = [
    f"memory {i}: lookup_add solved via the edge route after " + "one step " * 8 for i in range(6)
]


def test_leftover_rows_go_as_one_padded_forward_when_that_is_cheaper(
    embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows: list[tuple[int, int]] = []
    forward = embedder._forward

    def spy(ids: list[list[int]]):  # type: ignore[no-untyped-def]
        rows.append((len(ids), max(len(x) for x in ids)))
        return forward(ids)

    monkeypatch.setattr(embedder, "_forward", spy)
    short = embedder.embed(SHORT[:6])  # 16 tokens: 2 padding rows cost less than a forward
    embedder.embed(SHORT)  # 11: 8, then 3 padded to 4
    embedder.embed(LONG)  # 31 tokens (bucket 32): 2 padding rows cost more, so 4 + 2
    assert [r for r, _ in rows] == [8, 8, 4, 4, 2]
    assert max(t for _, t in rows[:3]) <= 16 and min(t for _, t in rows[3:]) > 24
    monkeypatch.undo()
    # The padded forward's real rows are the texts' own vectors.
    one_by_one = np.stack([embedder.embed([t])[0] for t in SHORT[:6]])
    np.testing.assert_allclose(short, one_by_one, atol=1e-5)


def test_threads_embedding_at_once_each_get_their_own(
    embedder: MiniLMEmbedder, alone: dict[str, np.ndarray]
) -> None:
    batches = [POOL[i : i + 1 + i % 4] for i in range(len(POOL))]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(embedder.embed, batches))
    for texts, vectors in zip(batches, results, strict=True):
        np.testing.assert_allclose(vectors, np.stack([alone[t] for t in texts]), atol=1e-5)


@given(st.lists(st.sampled_from(LENGTH_BUCKETS), min_size=1, max_size=400))
def test_the_chunk_plan_covers_every_text_in_fixed_shapes(lengths: list[int]) -> None:
    lengths.sort(reverse=True)
    plan = chunk_plan(lengths)
    assert sum(texts for texts, _ in plan) == len(lengths)
    assert all(rows & (rows - 1) == 0 and texts <= rows <= MAX_BATCH for texts, rows in plan)
    padded = [(texts, rows) for texts, rows in plan if texts != rows]
    # At most one padded chunk, the last, holding the leftover below PAD_BELOW, and only where
    # its padding rows cost fewer tokens than the forwards it saves.
    if padded:
        texts, rows = padded[0]
        saved = bin(texts).count("1") - 1  # the power-of-two chunks it replaces, less one
        assert (rows - texts) * lengths[-texts] <= FORWARD_TOKENS * saved
    assert len(padded) <= 1 and (not padded or (plan[-1] == padded[0] and padded[0][0] < PAD_BELOW))
    assert [rows for _, rows in plan] == sorted((rows for _, rows in plan), reverse=True)


def test_length_buckets_are_few_and_sorted() -> None:
    assert list(LENGTH_BUCKETS) == sorted(set(LENGTH_BUCKETS)) and len(LENGTH_BUCKETS) <= 10
