"""The shipped embedder's precision (core/embeddings.py): bfloat16 weights where the CPU has
bfloat16 natively, float32 elsewhere or when told; its vectors are float32's within the
stated cosine, rank neighbours as float32's do, stay unit length, keep the fixed shapes, and
do not depend on the caller's autocast or on the batch a text came in."""

from __future__ import annotations

import numpy as np
import pytest

from trifecta.core import embeddings
from trifecta.core.embeddings import (
    LENGTH_BUCKETS,
    PRECISION_ENV,
    MiniLMEmbedder,
    get_embedder,
    length_bucket,
    load_precision,
)
from trifecta.core.errors import InvalidInput

# The loop's kind of queries and memories: near-identical prompts (neighbours decided by a
# digit or a letter) and longer memory texts, so near-ties test the ranking hard.
QUERIES = [f"{a}+{b}?" for a in (3, 17, 42, 88) for b in (5, 29, 61)] + [
    f"{v}={a},k={b},n={a + b};{v}+k?" for v in "abxz" for a, b in ((4, 9), (31, 57), (70, 12))
]
MEMORIES = [
    f"lookup_add solved via edge/node-{i % 3}. verifier judged the answer {a + b} correct "
    f"Task: {a}+{b}?"
    for i, (a, b) in enumerate((a, b) for a in range(10, 90, 9) for b in range(3, 60, 11))
]
COSINE = 0.9995  # the least cosine to float32's vector a text may have (measured: 0.99989)
RECALL = 0.98  # recall@10 against float32's ranking (measured: 0.99 on the loop's texts)


@pytest.fixture(scope="module")
def float32() -> MiniLMEmbedder:
    return get_embedder("float32")


@pytest.fixture(scope="module")
def shipped() -> MiniLMEmbedder:
    return get_embedder()


def test_auto_is_bfloat16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(embeddings, "native_bfloat16", lambda: False)
    assert load_precision() == "float32"
    monkeypatch.setattr(embeddings, "native_bfloat16", lambda: True)
    assert load_precision() == "bfloat16"
    monkeypatch.setenv(PRECISION_ENV, "float32")
    assert load_precision() == "float32"
    monkeypatch.setenv(PRECISION_ENV, "int4")
    with pytest.raises(InvalidInput) as error:
        load_precision()
    assert error.value.field == PRECISION_ENV


def test_shipped_vectors_are_float32s_within_the_stated_cosine(
    float32: MiniLMEmbedder, shipped: MiniLMEmbedder
) -> None:
    texts = QUERIES + MEMORIES
    exact, ours = float32.embed(texts), shipped.embed(texts)
    assert ours.dtype == np.float32 and ours.shape == exact.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * exact).sum(axis=1).min() >= COSINE
    # Queries embedded by the shipped path against an index embedded in float32 (what a data
    # directory written before holds) find float32's ten nearest.
    index = exact[len(QUERIES) :]  # the memories, float32
    theirs = np.argsort(-(exact[: len(QUERIES)] @ index.T), axis=1)[:, :10]
    found = np.argsort(-(ours[: len(QUERIES)] @ index.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(theirs, found, strict=True)])
    assert recall >= RECALL


def test_shipped_vectors_ignore_the_callers_autocast_and_the_batch(
    shipped: MiniLMEmbedder,
) -> None:
    import torch

    alone = np.stack([shipped.embed([t])[0] for t in QUERIES[:6]])
    together = shipped.embed(QUERIES[:6])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the learner's context
        learner = shipped.embed(QUERIES[:6])
    if shipped.precision == "bfloat16":  # float32 weights follow the caller's autocast
        np.testing.assert_array_equal(learner, together)
    # bfloat16 products block by shape, so a batch's rows differ from each text alone, by
    # about what `encode` itself shows across batches (tests/core/test_embeddings_shapes.py).
    assert (alone * together).sum(axis=1).min() >= COSINE


def test_shipped_shapes_come_from_the_fixed_set(
    shipped: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    forward = shipped._forward

    def spy(ids: list[list[int]]):  # type: ignore[no-untyped-def]
        seen.append((len(ids), length_bucket(max(len(x) for x in ids), 256)))
        return forward(ids)

    monkeypatch.setattr(shipped, "_forward", spy)
    shipped.embed(MEMORIES + QUERIES[:5])
    assert {b for b, _ in seen} <= {1 << k for k in range(7)}
    assert {length for _, length in seen} <= set(LENGTH_BUCKETS)
