"""The embedder pads to a few fixed shapes (core/embeddings.py) and still returns
`SentenceTransformer.encode`'s vectors: in float32 to 1e-5, and under the learning worker's
bfloat16 autocast within the spread `encode` itself shows across batch compositions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trifecta.core.embeddings import (
    LENGTH_BUCKETS,
    MAX_BATCH,
    MiniLMEmbedder,
    get_embedder,
    length_bucket,
    power_of_two_chunks,
)

if TYPE_CHECKING:  # torch loads inside the tests that need it (the annotation needs only its name)
    import torch

# Varied on purpose: empty, one character, non-Latin scripts and emoji, digits, a text far
# past the 256-token limit (truncated), and memories of many lengths (a bucket each).
TEXTS = [
    "",
    "a",
    "What is 17 + 25?",
    "Ünïcödé テキスト 😀 — mixed scripts",
    "The quick brown fox jumps over the lazy dog. " * 3,
    " ".join(str(i) for i in range(300)),
    "x" * 3000,
] + [f"memory {i}: the answer was {i * 7} after " + "step " * (i * 4) for i in range(37)]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    # float32 weights, whatever the CPU: these are exact claims (the shipped bfloat16 path's
    # are tests/core/test_embed_precision.py).
    return get_embedder("float32")


def encode(embedder: MiniLMEmbedder, texts: list[str]) -> np.ndarray:
    model = embedder.model
    return np.asarray(
        model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False),  # type: ignore[attr-defined]
        dtype=np.float32,
    )


def test_float32_vectors_are_encodes(embedder: MiniLMEmbedder) -> None:
    ours = embedder.embed(TEXTS)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, encode(embedder, TEXTS), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    # Order is the caller's, whatever the chunking did (a text alone gives the same vector).
    np.testing.assert_allclose(ours[3], embedder.embed([TEXTS[3]])[0], atol=1e-5)


def test_bfloat16_vectors_within_encodes_own_spread(embedder: MiniLMEmbedder) -> None:
    """bfloat16 rounds every product to 8 bits of mantissa, and how a product is blocked
    depends on its shape, so `encode` itself gives other vectors for the same text in
    another batch: that spread (measured: 1.3e-3) is the bound, not 1e-5."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = embedder.embed(TEXTS)
        batched = encode(embedder, TEXTS)
        alone = np.concatenate([encode(embedder, [t]) for t in TEXTS])
    own_spread = np.abs(batched - alone).max()
    assert 0 < np.abs(ours - batched).max() <= max(own_spread, 2e-3)
    assert (ours * batched).sum(axis=1).min() > 0.9999  # cosine: the same neighbours


def test_shapes_come_from_the_fixed_set(
    embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    forward = embedder._forward

    def spy(ids: list[list[int]]) -> torch.Tensor:
        out = forward(ids)
        padded = length_bucket(max(len(x) for x in ids), 256)
        seen.append((len(ids), padded))
        return out

    monkeypatch.setattr(embedder, "_forward", spy)
    embedder.embed(TEXTS * 3)  # 132 texts
    sizes = {b for b, _ in seen}
    assert sizes <= {1 << k for k in range(7)} and sum(b for b, _ in seen) == 3 * len(TEXTS)
    assert {length for _, length in seen} <= set(LENGTH_BUCKETS)


@given(st.integers(min_value=1, max_value=1000))
def test_power_of_two_chunks_cover_the_count(count: int) -> None:
    sizes = power_of_two_chunks(count)
    assert sum(sizes) == count
    assert all(s & (s - 1) == 0 and s <= MAX_BATCH for s in sizes)
    assert sizes == sorted(sizes, reverse=True)


@given(st.integers(min_value=1, max_value=256))
def test_length_bucket_holds_the_text_within_half_again(tokens: int) -> None:
    bucket = length_bucket(tokens, 256)
    assert bucket in LENGTH_BUCKETS and tokens <= bucket <= max(32, tokens * 1.5)
