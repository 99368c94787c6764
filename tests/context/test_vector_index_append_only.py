"""The memory index is append-only (issue 15): a fork shares its parent's arrays and maps, a
write appends rows past the ones its parent sees and stamps the rows it removes with its own
epoch, so every earlier version answers as it did when it was current, whatever was written
after it (rewrites, removals, growth of the matrix, compaction, a fork dropped unwritten)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.context.test_standing import DIRECTIONS, POOL, QUERIES, item
from trifecta.context.memory_table import row_of
from trifecta.context.vector_index import MemoryIndex

DIM = DIRECTIONS.shape[1]

# a batch: (memory number, direction, active) rows; None: a fork written, then dropped
batch = st.one_of(
    st.none(),
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, POOL - 1), st.booleans()),
        min_size=1,
        max_size=40,
    ),
)


def brute(stored: dict[str, int], query: np.ndarray, k: int) -> list[str]:
    scored = sorted(
        (-float(DIRECTIONS[d].astype(np.float64) @ query.astype(np.float64)), m)
        for m, d in stored.items()
    )
    return [m for _, m in scored[:k]]


def write(index: MemoryIndex, rows: list[tuple[int, int, bool]], version: int) -> None:
    gone = [f"m{n:02d}" for n, _, active in rows if not active]
    live = {f"m{n:02d}": d for n, d, active in rows if active}
    index.remove(gone)
    items = [item(m, "success", float(version)) for m in live]
    index.upsert([(m, DIRECTIONS[d]) for m, d in live.items()], [row_of(i) for i in items])


@settings(max_examples=60, deadline=None)
@given(st.lists(batch, min_size=1, max_size=40))
def test_every_version_answers_as_when_it_was_current(batches: list) -> None:
    versions: list[tuple[MemoryIndex, dict[str, int], dict[str, float]]] = []
    current = MemoryIndex(DIM)
    stored: dict[str, int] = {}
    written: dict[str, float] = {}  # memory -> the version that wrote its row
    versions.append((current, dict(stored), dict(written)))
    for number, rows in enumerate(batches, start=1):
        if rows is None:  # a write begun and dropped: the next fork must not see it
            dropped = current.fork()
            write(dropped, [(n, d, True) for n in range(5) for d in (0,)], -1)
            continue
        fork = current.fork()
        write(fork, rows, number)
        for n, _, active in rows:  # removals first, then the rows written (`write`)
            if not active:
                stored.pop(f"m{n:02d}", None)
                written.pop(f"m{n:02d}", None)
        for n, d, active in rows:
            if active:
                stored[f"m{n:02d}"], written[f"m{n:02d}"] = d, float(number)
        current = fork
        versions.append((current, dict(stored), dict(written)))
    for index, held, rows_at in versions:
        assert len(index) == len(held)
        for q in QUERIES:
            found = [m for m, _ in index.search(q, 5)]
            assert [_score(m, held, q) for m in found] == pytest.approx(
                [_score(m, held, q) for m in brute(held, q, 5)], abs=1e-6
            )
            assert set(found) <= set(held)
        for m in {f"m{n:02d}" for n in range(41)}:
            row = index.item(m)
            assert (m in index) == (m in held)
            assert (row.created_at if row else None) == rows_at.get(m)


def _score(m: str, held: dict[str, int], q: np.ndarray) -> float:
    return float(DIRECTIONS[held[m]].astype(np.float64) @ q.astype(np.float64))


def test_a_fork_copies_nothing_and_compaction_leaves_the_old_version_whole() -> None:
    index = MemoryIndex(DIM)
    index.upsert([(f"m{i:04d}", DIRECTIONS[i % POOL]) for i in range(2_000)])
    fork = index.fork()
    assert fork._matrix is index._matrix and fork._shared is index._shared
    fork.remove([f"m{i:04d}" for i in range(1_500)])  # past half dead: the fork compacts
    assert fork._shared is not index._shared and len(fork) == 500
    assert len(index) == 2_000 and "m0000" in index and "m0000" not in fork
    assert len(index.search(QUERIES[0], 2_000)) == 2_000
    assert {m for m, _ in fork.search(QUERIES[0], 2_000)} == {
        f"m{i:04d}" for i in range(1_500, 2_000)
    }
