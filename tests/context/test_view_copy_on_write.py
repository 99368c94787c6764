"""A write to a domain view is built beside its searches and swapped in at once: a search
does not wait for a write's work, and sees the view before or after a write, never part of
one (nor keeps an answer of the view before a write as a standing search after it)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.context.test_standing import DIRECTIONS, POOL, QUERIES, brute_force, item
from trifecta.context import vector_index
from trifecta.context.models import MemoryItem, MemoryOutcome
from trifecta.context.views import DomainView
from trifecta.context.writes import Changes

SEARCHES = [(q, k, outcome) for q in range(3) for k in (1, 3) for outcome in (None, "success")]


Answers = dict[tuple[int, int, str | None], list[tuple[str, float]]]


def batches(draw_rows: list[list[tuple[int, int, MemoryOutcome, bool]]]) -> list[Changes]:
    changes = []
    for version, rows in enumerate(draw_rows):
        last = {row[0]: row for row in rows}  # a change set holds each memory once: last wins
        changes.append(
            Changes(
                version + 1,
                [],
                [
                    (
                        item(f"m{n:02d}", outcome, 1.0),
                        "active" if active else "removed",
                        DIRECTIONS[d],
                    )
                    for n, d, outcome, active in last.values()
                ],
                version,
            )
        )
    return changes


def answers_by_version(changes: list[Changes]) -> list[Answers]:
    """The exact answer of every search at every version (0: nothing written)."""
    stored: dict[str, tuple[MemoryItem, np.ndarray]] = {}
    out: list[Answers] = [{s: [] for s in SEARCHES}]
    for change in changes:
        for memory, status, vector in change.memories:
            if status == "active":
                stored[memory.id] = (memory, vector)
            else:
                stored.pop(memory.id, None)
        out.append({(q, k, o): brute_force(stored, QUERIES[q], k, o, None) for q, k, o in SEARCHES})
    return out


row = st.tuples(
    st.integers(0, 20),
    st.integers(0, POOL - 1),
    st.sampled_from(["success", "failure"]),
    st.sampled_from([True, True, True, False]),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(row, min_size=1, max_size=6), min_size=1, max_size=12))
def test_searches_beside_writes_see_a_whole_version(rows: list) -> None:
    changes = batches(rows)
    truth = answers_by_version(changes)
    view = DomainView("d")
    view.searches.first_asks = 0
    done = threading.Event()
    seen: list[tuple[tuple[int, int, str | None], list[tuple[str, float]]]] = []

    errors: list[BaseException] = []

    def reader() -> None:
        i = 0
        try:
            while not done.is_set() or i < len(SEARCHES):
                q, k, outcome = SEARCHES[i % len(SEARCHES)]
                hits = view.search(QUERIES[q], k=k, outcome=outcome)
                seen.append(((q, k, outcome), [(h.memory.id, h.similarity) for h in hits]))
                i += 1
        except BaseException as exc:  # a thread's error is the test's
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch inside a write and a search, not between
    try:
        for t in threads:
            t.start()
        for change in changes:
            assert view.apply(change)
        done.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors[0]
    for search, found in seen:
        assert any(_same(found, answers[search]) for answers in truth), (search, found)
    # and after the writes, every search (standing or not) answers at the last version
    for q, k, outcome in SEARCHES:
        hits = view.search(QUERIES[q], k=k, outcome=outcome)
        assert _same([(h.memory.id, h.similarity) for h in hits], truth[-1][(q, k, outcome)])


def _same(found: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    return [m for m, _ in found] == [m for m, _ in expected] and all(
        abs(a - b) < 1e-6 for (_, a), (_, b) in zip(found, expected, strict=True)
    )


@pytest.mark.parametrize("appended", [False, True])
def test_a_search_does_not_wait_for_a_write_in_progress(
    monkeypatch: pytest.MonkeyPatch, appended: bool
) -> None:
    """`appended`: the write paused after appending its rows to the arrays the view's index
    shares (append-only: a fork copies nothing), not before."""
    view = DomainView("d")
    view.apply(Changes(1, [], [(item("m00", "success", 1.0), "active", DIRECTIONS[0])], 0))
    inside, release = threading.Event(), threading.Event()
    upsert = vector_index.MemoryIndex.upsert

    def slow_upsert(self: vector_index.MemoryIndex, *args: object) -> None:
        if appended:
            upsert(self, *args)  # type: ignore[arg-type]
        inside.set()
        assert release.wait(10)
        if not appended:
            upsert(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(vector_index.MemoryIndex, "upsert", slow_upsert)
    write = threading.Thread(
        target=view.apply,
        args=(Changes(2, [], [(item("m01", "success", 1.0), "active", DIRECTIONS[0])], 1),),
    )
    write.start()
    assert inside.wait(10)
    # the write is half done (its memory rows built, its index not): a search answers now,
    # from the view before the write
    result: list[list[str]] = []
    search = threading.Thread(
        target=lambda: result.append(
            [h.memory.id for h in view.search(DIRECTIONS[0], k=2, outcome=None)]
        )
    )
    search.start()
    search.join(5)
    assert not search.is_alive() and result == [["m00"]]
    assert view.version == 1
    release.set()
    write.join(10)
    assert view.version == 2
    assert [h.memory.id for h in view.search(DIRECTIONS[0], k=2)] == ["m00", "m01"]


def test_an_answer_from_before_a_write_is_not_kept_after_it() -> None:
    """A search computed at version 1 and kept once version 2 is in would be a standing
    search the write never merged: it is dropped (commit), or not kept (the version moved)."""
    view = DomainView("d")
    view.searches.first_asks = 0
    view.apply(Changes(1, [], [(item("m00", "success", 1.0), "active", DIRECTIONS[1])], 0))
    planned = view.searches.entries()  # a write takes these ...
    view.search(DIRECTIONS[0], k=1)  # ... a search is kept meanwhile, at version 1
    update = view.searches.plan(planned, [(item("m01", "success", 1.0), DIRECTIONS[0])], set())
    view.searches.commit(update)
    assert len(view.searches) == 0


def test_a_view_with_a_usearch_graph_is_written_under_its_lock() -> None:
    view = DomainView("d")
    rows = [(item(f"m{i:02d}", "success", 1.0), "active", DIRECTIONS[i % POOL]) for i in range(8)]
    view.apply(Changes(1, [], rows, 0))
    assert view.index is not None
    view.index.hnsw_above = 4  # the graph path, as above 50,000 memories
    assert view.index.graph_shared
    assert len(view.search(np.asarray(DIRECTIONS[0]), k=3)) == 3
    view.apply(Changes(2, [], [(item("m99", "success", 1.0), "active", DIRECTIONS[0])], 1))
    assert "m99" in [h.memory.id for h in view.search(np.asarray(DIRECTIONS[0]), k=3)]


def test_a_search_that_spans_a_write_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its answer is of the view before the write, which the write did not merge."""
    view = DomainView("d")
    view.searches.first_asks = 0  # kept at the first ask
    view.apply(Changes(1, [], [(item("m00", "success", 1.0), "active", DIRECTIONS[1])], 0))
    inside, release = threading.Event(), threading.Event()
    search_index = vector_index.MemoryIndex.search
    writer = threading.current_thread()

    def slow_search(self: vector_index.MemoryIndex, *args: object, **kwargs: object) -> object:
        if threading.current_thread() is not writer:
            inside.set()
            assert release.wait(10)
        return search_index(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(vector_index.MemoryIndex, "search", slow_search)
    found: list[list[str]] = []
    search = threading.Thread(
        target=lambda: found.append([h.memory.id for h in view.search(DIRECTIONS[0], k=1)])
    )
    search.start()
    assert inside.wait(10)
    # m01 is DIRECTIONS[0] itself: the best answer from version 2 on
    view.apply(Changes(2, [], [(item("m01", "success", 1.0), "active", DIRECTIONS[0])], 1))
    release.set()
    search.join(10)
    assert found == [["m00"]]  # answered at version 1, where it began
    assert [h.memory.id for h in view.search(DIRECTIONS[0], k=1)] == ["m01"]
