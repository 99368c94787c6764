"""Standing searches survive writes exactly: after any sequence of writes and searches, the
view's answer (kept up to date in place) equals a brute-force search over what is stored."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.context.models import MemoryItem, MemoryOutcome, MemorySource
from trifecta.context.standing import SearchKey, StandingSearches
from trifecta.context.views import DomainView
from trifecta.context.writes import Changes

DIM = 16
POOL = 12  # distinct directions: memories share them, so equal scores (ties) happen


def unit_vectors(seed: int, count: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


DIRECTIONS = unit_vectors(0, POOL)
QUERIES = unit_vectors(1, 6)


def item(memory_id: str, outcome: MemoryOutcome, created_at: float) -> MemoryItem:
    return MemoryItem(
        id=memory_id,
        domain="d",
        title=memory_id,
        description="",
        content=memory_id,
        outcome=outcome,
        source=MemorySource(),
        created_at=created_at,
        updated_at=created_at,
    )


write = st.tuples(
    st.just("write"),
    st.lists(  # (memory number, direction, outcome, created_at, active)
        st.tuples(
            st.integers(0, 30),
            st.integers(0, POOL - 1),
            st.sampled_from(["success", "failure"]),
            st.sampled_from([1.0, 2.0, 3.0]),
            st.sampled_from([True, True, True, False]),  # mostly writes, some removals
        ),
        min_size=1,
        max_size=4,
    ),
)
search = st.tuples(
    st.just("search"),
    st.tuples(
        st.integers(0, 2),  # few distinct searches, so that many are asked again after writes
        st.sampled_from([1, 3]),
        st.sampled_from([None, "success"]),
        st.sampled_from([None, 2.0]),
    ),
)


def brute_force(
    stored: dict[str, tuple[MemoryItem, np.ndarray]],
    query: np.ndarray,
    k: int,
    outcome: str | None,
    since: float | None,
) -> list[tuple[str, float]]:
    scored = [
        (memory_id, float(np.dot(vector.astype(np.float64), query.astype(np.float64))))
        for memory_id, (memory, vector) in stored.items()
        if (outcome is None or memory.outcome == outcome)
        and (since is None or memory.created_at >= since)
    ]
    return sorted(scored, key=lambda p: (-p[1], p[0]))[:k]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(write, search), min_size=1, max_size=25))
def test_a_standing_search_equals_a_fresh_one_after_any_writes(steps: list) -> None:
    view = DomainView("d")
    stored: dict[str, tuple[MemoryItem, np.ndarray]] = {}
    version = 0
    for kind, body in steps:
        if kind == "write":
            rows = []
            # A change set holds each row once, in its state after the write (last wins).
            last = {number: (number, *rest) for number, *rest in body}
            for number, direction, outcome, created_at, active in last.values():
                memory = item(f"m{number:02d}", outcome, created_at)
                vector = DIRECTIONS[direction]
                rows.append((memory, "active" if active else "removed", vector))
                if active:
                    stored[memory.id] = (memory, vector)
                else:
                    stored.pop(memory.id, None)
            view.apply(Changes(version + 1, [], rows, version))
            version += 1
        else:
            q, k, outcome, since = body
            hits = view.search(QUERIES[q], k=k, outcome=outcome, since=since)
            expected = brute_force(stored, QUERIES[q], k, outcome, since)
            assert [h.memory.id for h in hits] == [m for m, _ in expected]
            assert [h.similarity for h in hits] == pytest.approx([s for _, s in expected], abs=1e-6)
            assert all(h.memory == stored[h.memory.id][0] for h in hits)


def test_a_new_memory_updates_the_searches_it_enters_and_leaves_the_others() -> None:
    searches = StandingSearches(first_asks=0)  # kept at the first ask
    near, far = unit_vectors(2, 2)
    keys = [SearchKey(v.tobytes(), 2, None, None) for v in (near, far)]
    searches.put(keys[0], near, [("a", 0.9), ("b", 0.5)])
    searches.put(keys[1], far, [("c", 0.99), ("d", 0.98)])
    searches.apply([(item("new", "success", 1.0), near)], set())
    assert searches.get(keys[0]) == [("new", pytest.approx(1.0, abs=1e-6)), ("a", 0.9)]
    assert searches.get(keys[1]) == [("c", 0.99), ("d", 0.98)]  # untouched: no list built
    assert searches.stats()["standing_updated"] == 1


def test_removing_a_memory_of_a_top_k_drops_that_search_only() -> None:
    searches = StandingSearches(first_asks=0)  # kept at the first ask
    q1, q2 = unit_vectors(3, 2)
    k1, k2 = SearchKey(q1.tobytes(), 1, None, None), SearchKey(q2.tobytes(), 1, None, None)
    searches.put(k1, q1, [("a", 0.9)])
    searches.put(k2, q2, [("b", 0.9)])
    searches.apply([], {"a"})
    assert searches.get(k1) is None
    assert searches.get(k2) == [("b", 0.9)]
    assert searches.stats()["standing_dropped"] == 1


def test_writes_never_build_standing_searches_of_their_own() -> None:
    """The writer's de-duplication probes are not kept as standing searches."""
    view = DomainView("d")
    view.apply(Changes(1, [], [(item("m1", "success", 1.0), "active", DIRECTIONS[0])], 0))
    assert view.nearest_memory(DIRECTIONS[0], "success") == ("m1", pytest.approx(1.0))
    assert len(view.searches) == 0
