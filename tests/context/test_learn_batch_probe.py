"""The learner's de-duplication probe of a whole batch (one matrix product of the batch with
the view, `DomainView.nearest_memories`; one product of the batch with itself,
`learn_batch.plan_against`) decides what the per-item scans decided: the same stored
near-duplicate for every new memory, the same reinforced and added survivors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.context.test_standing import item
from trifecta.context.learn_batch import plan_against, plan_memories
from trifecta.context.models import MemoryDraft, MemorySource
from trifecta.context.vector_index import MemoryIndex
from trifecta.context.views import DomainView
from trifecta.context.writes import Changes

DIM = 32
THRESHOLD = 0.95


def near(rng: np.random.Generator, base: np.ndarray, noise: float) -> np.ndarray:
    """A unit vector at a cosine to `base` set by `noise` (0: the same vector)."""
    vector = base + noise * rng.standard_normal(base.shape).astype(np.float32)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def seeded(seed: int, stored: int, batch: int) -> tuple[DomainView, list[np.ndarray], list[str]]:
    """A view of `stored` memories over a few directions, and a batch of new vectors: exact
    repeats, near-copies around the threshold, and strangers, of both outcomes."""
    rng = np.random.default_rng(seed)
    bases = [near(rng, rng.standard_normal(DIM).astype(np.float32), 0.0) for _ in range(6)]
    view = DomainView("d")
    memories = [
        (
            item(f"m{n:03d}", "success" if n % 3 else "failure", float(n)),
            "active",
            near(rng, bases[n % len(bases)], float(rng.choice([0.0, 0.02, 0.05, 0.3]))),
        )
        for n in range(stored)
    ]
    view.apply(Changes(1, [], memories, 0))
    vectors = [
        near(rng, bases[int(rng.integers(len(bases)))], float(rng.choice([0.0, 0.03, 0.06, 1.0])))
        for _ in range(batch)
    ]
    outcomes = [str(rng.choice(["success", "failure"])) for _ in range(batch)]
    return view, vectors, outcomes


def draft(n: int, outcome: str) -> MemoryDraft:
    return MemoryDraft(
        title=f"t{n}",
        description="",
        content=f"c{n}",
        outcome=outcome,
        source=MemorySource(trajectory_id=f"traj-{n}"),
    )


def kept(hit: tuple[str, float] | None) -> str | None:
    return hit[0] if hit is not None and hit[1] >= THRESHOLD else None


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 120), st.integers(1, 40))
def test_the_batch_probe_finds_what_a_scan_per_memory_finds(
    seed: int, stored: int, batch: int
) -> None:
    view, vectors, outcomes = seeded(seed, stored, batch)
    together = view.nearest_memories(vectors, outcomes)
    alone = [view.nearest_memory(v, o) for v, o in zip(vectors, outcomes, strict=True)]
    assert together == alone
    assert len(together) == batch


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 80), st.integers(1, 40))
def test_a_batch_keeps_the_survivors_the_per_item_scan_kept(
    seed: int, stored: int, batch: int
) -> None:
    view, vectors, outcomes = seeded(seed, stored, batch)
    drafts = [draft(n, o) for n, o in enumerate(outcomes)]
    ids = [f"new-{n}" for n in range(batch)]
    # Before: one scan of the view and one product per earlier item, per new memory; the
    # batch in two calls (as two trajectories), sharing `earlier`.
    half = batch // 2
    earlier_before: list = []
    before = []
    for part in (slice(0, half), slice(half, batch)):
        before += plan_memories(
            drafts[part],
            vectors[part],
            lambda v, o: kept(view.nearest_memory(v, o)),
            THRESHOLD,
            earlier_before,
        )
    stored_targets = [kept(hit) for hit in view.nearest_memories(vectors, outcomes)]
    after = plan_against(drafts, vectors, stored_targets, THRESHOLD, [], ids)
    before_ids = {b.id: n for n, b in enumerate(before)}
    # Same target for each memory (ids differ only by naming: map the batch's own).
    for n, (old, new) in enumerate(zip(before, after, strict=True)):
        assert new.id == ids[n]
        if old.reinforce in before_ids:
            assert new.reinforce == ids[before_ids[old.reinforce]]
        else:
            assert new.reinforce == old.reinforce


def test_a_batch_reinforces_stored_and_earlier_duplicates() -> None:
    """Planted cases, so the comparison above is not vacuous: an exact repeat of a stored
    memory reinforces it, a repeat of an earlier new memory reinforces that one, one of the
    other outcome does not, and a stranger is added."""
    rng = np.random.default_rng(3)
    base = near(rng, rng.standard_normal(DIM).astype(np.float32), 0.0)
    other = near(rng, rng.standard_normal(DIM).astype(np.float32), 0.0)
    view = DomainView("d")
    view.apply(Changes(1, [], [(item("old", "success", 0.0), "active", base)], 0))
    vectors = [base, other, near(rng, other, 0.001), other, near(rng, base, 2.0)]
    outcomes = ["success", "success", "success", "failure", "success"]
    targets = [kept(hit) for hit in view.nearest_memories(vectors, outcomes)]
    assert targets == ["old", None, None, None, None]
    planned = plan_against(
        [draft(n, o) for n, o in enumerate(outcomes)], vectors, targets, THRESHOLD, []
    )
    assert [p.reinforce for p in planned] == ["old", None, planned[1].id, None, None]


def test_search_many_answers_as_search_with_filters() -> None:
    rng = np.random.default_rng(5)
    index = MemoryIndex(DIM)
    vectors = rng.standard_normal((300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.upsert((f"m{n}", v) for n, v in enumerate(vectors))
    index.remove([f"m{n}" for n in range(0, 300, 7)])  # dead rows are masked in both
    queries = vectors[:20] + 0.1 * rng.standard_normal((20, DIM)).astype(np.float32)

    def even(memory_id: str) -> bool:
        return int(memory_id[1:]) % 2 == 0

    accepts = [None if n % 3 else even for n in range(20)]
    for k in (1, 5):
        assert index.search_many(queries, k, accepts) == [
            index.search(q, k, a) for q, a in zip(queries, accepts, strict=True)
        ]
    with pytest.raises(ValueError, match="accepts"):
        index.search_many(queries, 1, accepts[:3])


def test_a_reinforced_memory_leaves_the_standing_searches_it_is_in() -> None:
    """A rewrite with the same vector, outcome and creation time (a reinforcement) keeps the
    searches it ranks in, which answer as a fresh search with its new count; a rewrite that
    moves the vector drops them."""
    rng = np.random.default_rng(8)
    vectors = [near(rng, rng.standard_normal(DIM).astype(np.float32), 0.0) for _ in range(4)]
    view = DomainView("d")
    view.searches.first_asks = 0
    memories = [item(f"m{n}", "success", float(n)) for n in range(4)]
    view.apply(
        Changes(1, [], [(m, "active", v) for m, v in zip(memories, vectors, strict=True)], 0)
    )
    view.search(vectors[0], k=2)  # kept from its first ask
    reinforced = memories[0].model_copy(update={"reinforced": 5, "updated_at": 9.0})
    view.apply(Changes(2, [], [(reinforced, "active", vectors[0])], 1))
    assert view.searches.stats()["standing_dropped"] == 0
    hits = view.search(vectors[0], k=2)
    assert hits[0].memory.reinforced == 5
    fresh = DomainView("d")
    fresh.apply(
        Changes(
            2,
            [],
            [
                (reinforced, "active", vectors[0]),
                *[(m, "active", v) for m, v in zip(memories[1:], vectors[1:], strict=True)],
            ],
            0,
        )
    )
    assert [(h.memory.id, h.similarity) for h in hits] == [
        (h.memory.id, h.similarity) for h in fresh.search(vectors[0], k=2)
    ]
    moved = memories[0].model_copy(update={"reinforced": 6})
    view.apply(Changes(3, [], [(moved, "active", vectors[1])], 2))
    assert view.searches.stats()["standing_dropped"] == 1
