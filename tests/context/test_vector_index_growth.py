"""The memory index's matrix grows in bounded steps (issue 16): 256 rows, or an eighth of the
matrix once that is more, never doubling; the spare rows are never read, so the answers are
those of a brute-force scan whatever the capacity."""

from __future__ import annotations

import numpy as np
import pytest

from trifecta.context.vector_index import GROW_ROWS, MemoryIndex, grown_rows

DIM = 384


def test_growth_steps_are_bounded_and_amortized() -> None:
    capacity, copies, grown = 64, 0, 0
    for needed in range(1, 20_001):
        if needed > capacity:
            step = grown_rows(capacity, needed) - capacity
            assert step <= max(GROW_ROWS, capacity // 8) + 1
            copies += capacity
            capacity += step
            grown += 1
        assert capacity - needed < max(GROW_ROWS, capacity // 8)  # the spare is bounded
    assert copies < 9 * 20_000  # each row copied about 8 times, as by a growth of 1.125
    assert grown < 60  # about 40 steps to 20,000 rows (doubling: 9, each larger)


def test_an_index_grown_row_by_row_answers_as_a_brute_force_scan() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1_500, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = MemoryIndex(DIM)
    for i, vector in enumerate(vectors):
        index.upsert([(f"m{i:05d}", vector)])
    assert len(index._matrix) - len(index) < GROW_ROWS  # was 2,048 rows for 1,500 (doubling)
    index.remove([f"m{i:05d}" for i in range(0, 1_500, 3)])
    query = vectors[7]
    expected = vectors.astype(np.float64) @ query.astype(np.float64)
    expected[::3] = -np.inf
    best = np.argsort(-expected, kind="stable")[:10]
    found = index.search(query, 10)
    assert [m for m, _ in found] == [f"m{i:05d}" for i in best]
    assert [s for _, s in found] == pytest.approx(list(expected[best]), abs=1e-12)
