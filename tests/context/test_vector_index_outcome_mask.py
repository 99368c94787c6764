"""An outcome filter is a vector mask over the scan's scores (issue 15): a search or a batch
probe with `outcome` answers exactly as the same search filtered by `accept` alone (the
oversampled candidates widened until k pass), through forks, rewrites that change a
memory's outcome, removals and compaction, ties included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.context.test_standing import DIRECTIONS, POOL, QUERIES, item
from trifecta.context.memory_table import row_of
from trifecta.context.vector_index import MemoryIndex

DIM = DIRECTIONS.shape[1]
OUTCOMES = ("success", "failure")

# a write: (memory number, direction, outcome index, active) rows
rows = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, POOL - 1), st.integers(0, 1), st.booleans()),
    min_size=1,
    max_size=30,
)


def brute(stored: dict[str, tuple[int, str]], query: np.ndarray, k: int, outcome: str) -> list:
    scored = sorted(
        (-float(DIRECTIONS[d].astype(np.float64) @ query.astype(np.float64)), m)
        for m, (d, o) in stored.items()
        if o == outcome
    )
    return [m for _, m in scored[:k]]


@settings(max_examples=80, deadline=None)
@given(st.lists(rows, min_size=1, max_size=25), st.integers(1, 6))
def test_masked_search_answers_as_the_filtered_one(writes: list, k: int) -> None:
    index = MemoryIndex(DIM)
    stored: dict[str, tuple[int, str]] = {}
    for batch in writes:
        fork = index.fork()
        gone = [f"m{n:02d}" for n, _, _, active in batch if not active]
        live = {f"m{n:02d}": (d, OUTCOMES[o]) for n, d, o, active in batch if active}
        fork.remove(gone)
        items = [item(m, o, 1.0) for m, (_, o) in live.items()]  # type: ignore[arg-type]
        fork.upsert([(m, DIRECTIONS[d]) for m, (d, _) in live.items()], [row_of(i) for i in items])
        for m in gone:
            stored.pop(m, None)
        stored.update(live)
        index = fork
        for outcome in OUTCOMES:

            def accept(memory_id: str, wanted: str = outcome, at: MemoryIndex = index) -> bool:
                row = at.item(memory_id)
                return row is not None and row.outcome == wanted

            for query in QUERIES:
                masked = index.search(query, k, accept, outcome)
                assert masked == index.search(query, k, accept)
                assert [m for m, _ in masked] == brute(stored, query, k, outcome)
            probed = index.search_many(QUERIES, k, [accept] * len(QUERIES), [outcome] * 6)
            assert probed == [index.search(q, k, accept) for q in QUERIES]


def test_a_probe_whose_neighbours_are_of_the_other_outcome_scans_no_candidate_list() -> None:
    """The learner's case: the nearest thousands are successes, the probe wants a failure.
    Filtering candidates in Python widened to 4,096 of them; the mask rescores k."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((DIM,), dtype=np.float32)
    near = base + 0.05 * rng.standard_normal((3000, DIM)).astype(np.float32)
    far = rng.standard_normal((5, DIM)).astype(np.float32)
    vectors = np.vstack([near, far])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    outcomes = ["success"] * len(near) + ["failure"] * len(far)
    index = MemoryIndex(DIM)
    ids = [f"m{i:05d}" for i in range(len(vectors))]
    index.upsert(
        zip(ids, vectors, strict=True),
        [row_of(item(m, o, 1.0)) for m, o in zip(ids, outcomes, strict=True)],  # type: ignore[arg-type]
    )
    seen: list[str] = []

    def accept(memory_id: str) -> bool:
        seen.append(memory_id)
        row = index.item(memory_id)
        return row is not None and row.outcome == "failure"

    query = base / np.linalg.norm(base)
    found = index.search(query, 1, accept, "failure")
    best = max(range(len(near), len(vectors)), key=lambda i: float(vectors[i] @ query))
    assert [m for m, _ in found] == [ids[best]]
    assert len(seen) <= 5  # only rows of the wanted outcome reach the Python filter
    assert index.search(query, 1, accept) == found
