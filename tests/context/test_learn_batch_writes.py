"""The learner's batched writes leave the shard as the writes one step at a time did.

`MemoryBatch` holds a batch's memories back and writes them in a few statements at the end,
and `apply_batch` writes the domain's version once; these tests run the same steps both ways
on two shards and compare every row (times aside, which differ by when each ran)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from trifecta.context import tables
from trifecta.context.learn_queue import Item, mark_done, mark_done_many
from trifecta.context.models import MemoryDraft, MemorySource
from trifecta.context.sql import DomainMoved, lock_domain, read_domain
from trifecta.context.store import ShardStore
from trifecta.context.trajectory import Trajectory
from trifecta.context.writes import MemoryBatch, PendingMemory, insert_memories
from trifecta.core.db import transaction

DOMAIN = "plant"


def vector(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


def memory(i: int, reinforce: str | None = None) -> PendingMemory:
    draft = MemoryDraft(
        title=f"m{i}",
        content=f"memory {i}",
        outcome="success",
        source=MemorySource(capsule_id="twin-a", task_id=f"t{i}"),
    )
    return PendingMemory(f"mem-{i:020d}", draft, vector(i), reinforce)


# Steps of one batch: a stored item reinforced twice, an item added then reinforced by a
# later step and by its own step, an id added twice, an empty step, a reinforcement of an
# id the table does not hold.
STORED = [memory(0)]
STEPS = [
    [memory(1), memory(2, reinforce=memory(0).id)],
    [memory(3), memory(4, reinforce=memory(3).id)],
    [],
    [memory(1), memory(5, reinforce=memory(3).id), memory(6, reinforce=memory(0).id)],
    [memory(7, reinforce="mem-" + "f" * 20)],
]
TIMES = {"created_at", "updated_at"}


def rows(store: ShardStore) -> list[dict[str, object]]:
    with transaction(store.engine) as session:
        found = session.execute(
            select(tables.memories).where(tables.memories.c.domain == DOMAIN)
        ).all()
    return sorted(
        ({k: v for k, v in r._mapping.items() if k not in TIMES} for r in found),
        key=lambda r: str(r["id"]),
    )


def version(store: ShardStore) -> int:
    with transaction(store.engine) as session:
        return read_domain(session, DOMAIN)[0]


@pytest.fixture
def stores(tmp_path: Path) -> tuple[ShardStore, ShardStore]:
    one, two = (
        ShardStore(f"sqlite:///{tmp_path}/one.db"),
        ShardStore(f"sqlite:///{tmp_path}/two.db"),
    )
    for store in (one, two):
        store.add_memories(DOMAIN, STORED)
    return one, two


def test_a_memory_batch_writes_what_the_steps_one_at_a_time_wrote(
    stores: tuple[ShardStore, ShardStore],
) -> None:
    one_at_a_time, batched = stores
    with transaction(one_at_a_time.engine, write=True) as session:
        v = lock_domain(session, DOMAIN)
        expected = []
        for step in STEPS:
            v, results = insert_memories(session, DOMAIN, v, step)
            expected.append((v, results))
    with transaction(batched.engine, write=True) as session:
        v = start = lock_domain(session, DOMAIN)
        batch = MemoryBatch(session, DOMAIN, [p.id for step in STEPS for p in step])
        got = []
        for step in STEPS:
            v, results = batch.add(v, step)
            got.append((v, results))
        batch.flush(session)
        session.execute(
            tables.domains.update().where(tables.domains.c.domain == DOMAIN).values(version=v)
        )
    assert got == expected
    assert v == start + 4  # every step that wrote bumped the version once
    assert rows(batched) == rows(one_at_a_time)
    assert version(batched) == version(one_at_a_time)
    reinforced = {r["id"]: r["reinforced"] for r in rows(batched)}
    assert reinforced[memory(0).id] == 2 and reinforced[memory(3).id] == 2


def test_closing_rows_together_records_what_closing_each_did(tmp_path: Path) -> None:
    store = ShardStore(f"sqlite:///{tmp_path}/q.db")
    trajectories = [
        Trajectory(
            id=f"req-{i}",
            capsule_id="twin-a",
            domain=DOMAIN,
            task_id=f"t{i}",
            prompt=f"{i}+1?",
            answer=str(i + 1),
            outcome="success",
            judge="verifier",
        )
        for i in range(4)
    ]
    ids = [store.queue.enqueue(DOMAIN, t).position for t in trajectories]
    store.queue.retry_later(ids, "shard unreachable")  # an earlier attempt's error, cleared
    result = {"applied_ops": [], "skipped_ops": [], "memories": [{"id": "m", "status": "added"}]}
    with transaction(store.engine, write=True) as session:
        mark_done(session, ids[0], 3, result)
        mark_done(session, ids[1], 3, {"error": {"code": "x"}}, "failed")
        mark_done_many(session, [(ids[2], 4, result, "done"), (ids[3], 4, {}, "failed")])
    closed = [(r.state, r.version, r.result, r.error) for r in store.queue.rows(DOMAIN)]
    assert closed == [
        ("done", 3, result, None),
        ("failed", 3, {"error": {"code": "x"}}, None),
        ("done", 4, result, None),
        ("failed", 4, {}, None),
    ]
    assert store.queue.pending_count() == 0


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_fenced_domain_refuses_its_own_items_and_the_group_is_queued_without_them(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Nothing of a fenced domain is queued and the other domains' items of the group are
    acknowledged once each: the INSERT leaves the fenced domain's rows out itself."""
    url = (
        f"sqlite:///{tmp_path}/q.db"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    store = ShardStore(url)
    with transaction(store.engine, write=True) as session:
        lock_domain(session, "grid")
        session.execute(
            tables.domains.update()
            .where(tables.domains.c.domain == "grid")
            .values(state="moved", moved_to="shard-2")
        )

    def trajectory(i: int, domain: str) -> Trajectory:
        return Trajectory(id=f"req-{domain}-{i}", capsule_id="twin-a", prompt=f"{i}?")

    items: list[Item] = [
        ("plant", trajectory(0, "plant"), None),
        ("grid", trajectory(1, "grid"), None),
    ]
    items += [("plant", trajectory(2, "plant"), None), ("plant", trajectory(0, "plant"), None)]
    out = store.queue._enqueue_group(items)
    assert isinstance(out[1], DomainMoved) and out[1].moved_to == "shard-2"
    tickets = [t for t in out if not isinstance(t, BaseException)]
    assert [(t.trajectory_id, t.duplicate) for t in tickets] == [
        ("req-plant-0", False),
        ("req-plant-2", False),
        ("req-plant-0", True),
    ]
    assert tickets[0].position == tickets[2].position < tickets[1].position
    assert [r.trajectory_id for r in store.queue.rows("plant")] == ["req-plant-0", "req-plant-2"]
    assert store.queue.rows("grid") == []
    with pytest.raises(DomainMoved):
        store.queue.enqueue("grid", trajectory(3, "grid"))
