"""Delta merge properties: replaying a delta changes nothing; independent ops commute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trifecta.context.deltas import AddOp, Delta, DeltaOp, RemoveOp, TagOp, UpdateOp
from trifecta.context.merge import BulletState, apply_ops, bullet_id_for
from trifecta.context.settings import ContextSettings
from trifecta.context.store import ShardStore
from trifecta.context.tokens import count_tokens
from trifecta.core.embeddings import MiniLMEmbedder
from trifecta.core.errors import Conflict, NotFound

# Clearly distinct advice, so de-duplication never merges two of them.
SENTENCES = [
    "Read the named sensor value straight from the telemetry before doing any arithmetic.",
    "Apply each minus sign only to the term that immediately follows it.",
    "Escalate to the large tier when the mean token entropy exceeds the threshold.",
    "Route light lookups to a healthy edge node to save cloud cost.",
    "Check that every sensor named in the expression appears in the telemetry list.",
    "Sum the operands from left to right and keep a running total.",
    "When the verifier reports a mismatch, record the expected value as a lesson.",
    "Prefer the cached playbook over recomputing strategies for repeated prompts.",
    "Three-term chains fail most often on the second subtraction.",
    "Sovereign capsules must keep context inside their own jurisdiction.",
    "Large operands above ninety are common in grid telemetry.",
    "Answer with the bare integer and nothing else.",
]
SECTIONS = ["strategies", "pitfalls", "checks"]
INITIAL = 6


def initial_state() -> dict[str, BulletState]:
    return {
        f"ini-{i:04d}": BulletState(
            f"ini-{i:04d}",
            SECTIONS[i % 3],
            SENTENCES[i],
            helpful=i,
            harmful=i % 2,
            tokens=count_tokens(SENTENCES[i]),
        )
        for i in range(INITIAL)
    }


@st.composite
def independent_ops(draw: Any) -> list[DeltaOp]:
    """ADDs of new bullets; TAGs on any initial bullet; at most one UPDATE per initial bullet;
    REMOVEs only of initial bullets no other op touches. No two ops depend on each other."""
    roles = draw(
        st.lists(
            st.sampled_from(["tag", "update", "remove", "none"]), min_size=INITIAL, max_size=INITIAL
        )
    )
    ops: list[DeltaOp] = []
    for i, role in enumerate(roles):
        target = f"ini-{i:04d}"
        if role == "tag":
            for j in range(draw(st.integers(1, 3))):
                ops.append(
                    TagOp(
                        op_id=f"tag-{i}-{j}",
                        bullet_id=target,
                        tag=draw(st.sampled_from(["helpful", "harmful"])),
                        count=draw(st.integers(1, 4)),
                    )
                )
        elif role == "update":
            ops.append(
                UpdateOp(
                    op_id=f"upd-{i}",
                    bullet_id=target,
                    content=SENTENCES[INITIAL + (i % (len(SENTENCES) - INITIAL))],
                )
            )
        elif role == "remove":
            ops.append(RemoveOp(op_id=f"rem-{i}", bullet_id=target))
    for k in range(draw(st.integers(0, 3))):
        ops.append(
            AddOp(
                op_id=f"add-{k}",
                section=draw(st.sampled_from(SECTIONS)),
                content=SENTENCES[INITIAL + k],
            )
        )
    return ops


def run(
    ops: list[DeltaOp], state: dict[str, BulletState] | None = None, applied: set[str] | None = None
) -> dict[str, BulletState]:
    state = initial_state() if state is None else state
    apply_ops(
        state,
        set() if applied is None else applied,
        ops,
        now=1.0,
        prune_margin=3,
        count_tokens=count_tokens,
    )
    return state


def keys(state: dict[str, BulletState]) -> list[tuple[Any, ...]]:
    return sorted(b.key() for b in state.values())


@given(ops=independent_ops(), data=st.data())
def test_order_of_independent_ops_does_not_matter(ops: list[DeltaOp], data: Any) -> None:
    shuffled = data.draw(st.permutations(ops))
    assert keys(run(ops)) == keys(run(list(shuffled)))


@given(ops=independent_ops(), split=st.integers(0, 20))
def test_replaying_applied_ops_changes_nothing(ops: list[DeltaOp], split: int) -> None:
    applied: set[str] = set()
    state = run(ops, applied=applied)
    once = keys(state)
    # Replay all of it, and a prefix of it, as new deltas against the same applied-id set.
    run(ops, state, applied)
    run(ops[: split % (len(ops) + 1)], state, applied)
    assert keys(state) == once


def test_tags_follow_a_merged_bullet_and_spare_a_removed_one() -> None:
    state = initial_state()
    state["ini-0001"].status = state["ini-0001"].status.MERGED
    state["ini-0001"].merged_into = "ini-0000"
    report = apply_ops(
        state,
        set(),
        [
            TagOp(op_id="t1", bullet_id="ini-0001", tag="helpful", count=2),
            RemoveOp(op_id="r1", bullet_id="ini-0002"),
            TagOp(op_id="t2", bullet_id="ini-0002", tag="harmful"),
        ],
        now=2.0,
        prune_margin=3,
        count_tokens=count_tokens,
    )
    assert state["ini-0000"].helpful == 0 + 2
    assert report.ignored == ["t2"] and state["ini-0002"].harmful == 0


def test_bad_references_name_the_operation() -> None:
    with pytest.raises(NotFound) as missing:
        run([TagOp(op_id="t", bullet_id="zzz-0000", tag="helpful")])
    assert missing.value.field == "ops[0].bullet_id"
    added = bullet_id_for("strategies", "a")
    with pytest.raises(Conflict) as twice:
        run(
            [
                AddOp(op_id="a", section="strategies", content="x"),
                AddOp(op_id="b", section="strategies", content="y", bullet_id=added),
            ]
        )
    assert twice.value.field == "ops[1].bullet_id"


@pytest.fixture(scope="module")
def sentence_vectors(embedder: MiniLMEmbedder) -> dict[str, np.ndarray]:
    return dict(zip(SENTENCES, embedder.embed(SENTENCES), strict=True))


def stored_keys(store: ShardStore, domain: str) -> list[tuple[Any, ...]]:
    _, bullets = store.bullets(domain, live_only=False)
    return sorted(BulletState.of(b).key() for b in bullets)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=independent_ops(), data=st.data())
def test_store_merges_deltas_in_any_order_to_the_same_playbook(
    ops: list[DeltaOp], data: Any, tmp_path: Path, sentence_vectors: dict[str, np.ndarray]
) -> None:
    """The same property through the real store: one delta per op, in two orders, into two
    domains, with embeddings and de-duplication on; then every delta replayed."""
    store = ShardStore(f"sqlite:///{tmp_path / 'merge.db'}")
    config = ContextSettings()
    seed = Delta(
        ops=[
            AddOp(op_id=f"seed-{i}", section=b.section, content=b.content, bullet_id=b.id)
            for i, b in enumerate(initial_state().values())
        ]
    )
    orders = {"first": ops, "second": list(data.draw(st.permutations(ops)))}
    tag = data.draw(st.uuids()).hex[:8]
    for name, order in orders.items():
        domain = f"{name}-{tag}"
        store.apply_delta(domain, seed, sentence_vectors, config)
        for op in order:
            store.apply_delta(domain, Delta(ops=[op]), sentence_vectors, config)
        before = stored_keys(store, domain)
        for op in order:
            replay = store.apply_delta(domain, Delta(ops=[op]), sentence_vectors, config)
            assert replay.skipped == [op.op_id]
        assert stored_keys(store, domain) == before
    assert stored_keys(store, f"first-{tag}") == stored_keys(store, f"second-{tag}")
