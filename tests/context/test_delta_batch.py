"""The learner merges a batch's deltas in memory and writes them once (`DeltaBatch`); the
rows must end as merging each delta alone (in its own savepoint, as before) leaves them.

Both ways run the same steps on two shards and every bullet and applied-op row is compared
(times aside, which differ by when each ran), with the results each step returned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from trifecta.context import tables
from trifecta.context.deltas import AddOp, Delta, DeltaOp, DeltaResult, RemoveOp, TagOp, UpdateOp
from trifecta.context.merge import bullet_id_for
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import Vector, lock_domain, read_domain
from trifecta.context.store import ShardStore
from trifecta.context.writes import DeltaBatch, merge_delta
from trifecta.core.db import transaction
from trifecta.core.errors import TrifectaError

DOMAIN = "plant"
TIMES = {"created_at", "updated_at", "applied_at"}
# A small budget, so the batch's adds evict the least useful bullets.
SETTINGS = ContextSettings(playbook_token_budget=64, prune_margin=2)


def unit(seed: int, near: int | None = None) -> Vector:
    """A random unit vector; with `near`, one at cosine > 0.99 to `unit(near)`."""
    v = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    if near is not None:
        v = unit(near) * 20 + v * 0.1
    return (v / np.linalg.norm(v)).astype(np.float32)


# Two long pieces of advice, which the budget cannot hold beside the rest.
LONG = [
    "Keep a running total from the left, adding each operand in turn; check the sum twice, "
    "and once more when a minus sign is in the chain, since that is where slips happen.",
    "Answer with the bare integer only: no units, no words, no signs of doubt and no "
    "explanation, because the verifier compares the reply with the expected value exactly.",
]
TEXTS = {
    "Read the sensor first.": unit(1),
    "Minus binds to the next term.": unit(2),
    "Escalate on high entropy.": unit(3),
    "Read the named sensor first.": unit(4, near=1),  # a near-duplicate of the first
    "Route lookups to the edge.": unit(5),
    LONG[0]: unit(6),
    LONG[1]: unit(7),
}
SEED = Delta(
    ops=[
        AddOp(op_id=f"seed-{i}", section="strategies", content=text)
        for i, text in enumerate(list(TEXTS)[:3])
    ]
)
IDS = [bullet_id_for("strategies", f"seed-{i}") for i in range(3)]
NEAR = "Read the named sensor first."


def tag(op_id: str, bullet: str, kind: str = "helpful") -> TagOp:
    return TagOp(op_id=op_id, bullet_id=bullet, tag=kind)


# A learner's batch: tags (the loop's deltas), a tag of a bullet an earlier step added, a
# near-duplicate that merges and the tags that follow it to the survivor, a refused delta
# (its first op applies before its second is refused: nothing of it may stay), a replay,
# an update, a removal and a tag of the removed bullet, adds that outgrow the budget.
STEPS: list[Delta] = [
    Delta(ops=[tag("t1:a", IDS[0]), tag("t1:b", IDS[1], "harmful")]),
    Delta(ops=[AddOp(op_id="t2:add", section="strategies", content=NEAR)]),
    Delta(ops=[tag("t3:a", bullet_id_for("strategies", "t2:add")), tag("t3:b", IDS[2])]),
    Delta(ops=[tag("t4:a", IDS[0]), tag("t4:b", "str-0000000000")]),  # refused: NotFound
    Delta(ops=[tag("t1:a", IDS[0])]),  # replayed: skipped
    Delta(ops=[tag("t6:a", IDS[1], "harmful"), tag("t6:b", IDS[1], "harmful")]),  # pruned
    Delta(ops=[UpdateOp(op_id="t7:upd", bullet_id=IDS[2], content="Route lookups to the edge.")]),
    Delta(ops=[RemoveOp(op_id="t8:rm", bullet_id=IDS[1]), tag("t8:a", IDS[1])]),
    Delta(
        ops=[
            AddOp(
                op_id="t9:add",
                section="checks",
                content=LONG[0],
            ),
            AddOp(
                op_id="t9:add2",
                section="checks",
                content=LONG[1],
            ),
        ]
    ),
    Delta(ops=[AddOp(op_id="t2:add", section="strategies", content=NEAR), tag("t10", IDS[0])]),
]


def rows(store: ShardStore, table: tables.Table) -> list[dict[str, object]]:
    with transaction(store.engine) as session:
        found = session.execute(select(table).where(table.c.domain == DOMAIN)).all()
    return sorted(
        ({k: v for k, v in r._mapping.items() if k not in TIMES} for r in found),
        key=lambda r: sorted(r.items()).__repr__(),
    )


def comparable(result: DeltaResult | str) -> object:
    if isinstance(result, str):
        return result
    dumped = result.model_dump()
    dumped["bullets"] = [{k: v for k, v in b.items() if k not in TIMES} for b in dumped["bullets"]]
    return dumped


@pytest.fixture
def stores(tmp_path: Path) -> tuple[ShardStore, ShardStore]:
    one, two = (ShardStore(f"sqlite:///{tmp_path}/{n}.db") for n in ("one", "two"))
    for store in (one, two):
        store.apply_delta(DOMAIN, SEED, TEXTS, SETTINGS)
    return one, two


def test_a_delta_batch_writes_what_merging_each_delta_alone_wrote(
    stores: tuple[ShardStore, ShardStore],
) -> None:
    alone, batched = stores
    expected: list[object] = []
    with transaction(alone.engine, write=True) as session:
        v = lock_domain(session, DOMAIN)
        for delta in STEPS:
            try:
                with session.begin_nested():
                    result = merge_delta(session, DOMAIN, v, delta, TEXTS, SETTINGS)
            except TrifectaError as exc:
                expected.append(exc.one_line())
                continue
            v = result.version
            expected.append(comparable(result))
    got: list[object] = []
    with transaction(batched.engine, write=True) as session:
        w = start = lock_domain(session, DOMAIN)
        batch = DeltaBatch(session, DOMAIN, STEPS)
        for delta in STEPS:
            try:
                result = batch.merge(w, delta, TEXTS, SETTINGS)
            except TrifectaError as exc:
                got.append(exc.one_line())
                continue
            w = result.version
            got.append(comparable(result))
        batch.flush(session)
        session.execute(
            tables.domains.update().where(tables.domains.c.domain == DOMAIN).values(version=w)
        )
    assert got == expected
    assert w == v and w == start + 8  # every step but the refused and the replayed one
    assert rows(batched, tables.bullets) == rows(alone, tables.bullets)
    assert rows(batched, tables.applied_ops) == rows(alone, tables.applied_ops)
    with transaction(batched.engine) as session:
        assert read_domain(session, DOMAIN)[0] == w
    statuses = {r["id"]: r["status"] for r in rows(batched, tables.bullets)}
    assert statuses[IDS[1]] == "removed"  # pruned, then removed; its later tag ignored
    assert statuses[bullet_id_for("strategies", "t2:add")] == "merged"
    assert "evicted" in statuses.values()  # the adds outgrew the budget
    assert isinstance(got[3], str) and "ops[1].bullet_id" in got[3]  # refused whole:
    assert {"t4:a", "t4:b"}.isdisjoint(r["op_id"] for r in rows(batched, tables.applied_ops))


def test_a_delta_that_adds_text_is_refused_by_a_batch_built_without_it(
    stores: tuple[ShardStore, ShardStore],
) -> None:
    """The batch loads the whole live playbook only when one of its deltas adds text."""
    store, _ = stores
    ops: list[DeltaOp] = [AddOp(op_id="late", section="checks", content=NEAR)]
    with transaction(store.engine, write=True) as session:
        v = lock_domain(session, DOMAIN)
        batch = DeltaBatch(session, DOMAIN, [STEPS[0]])
        with pytest.raises(ValueError, match="delta"):
            batch.merge(v, Delta(ops=ops), TEXTS, SETTINGS)
