"""Learning off the request path: the durable queue, the worker, the live view, and the
query-embedding cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.context.conftest import ChangesSpy, ServiceFactory
from tests.context.submitter import trajectory
from trifecta.context import tables
from trifecta.context.deltas import AddOp, Delta, TagOp
from trifecta.context.facade import ContextService
from trifecta.context.models import RetrieveRequest
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import Vector
from trifecta.context.store import ShardStore
from trifecta.core.db import get_engine, transaction
from trifecta.core.errors import NotFound

REPO = Path(__file__).resolve().parents[2]


def seed_bullet(service: ContextService) -> str:
    result = service.apply_delta(
        "twin-a",
        Delta(ops=[AddOp(op_id="seed", section="strategies", content="Read the named sensor.")]),
    )
    return result.added[0]


def bullet_counts(url: str, bullet_id: str) -> tuple[int, int]:
    with transaction(get_engine(url)) as session:
        row = session.execute(
            select(tables.bullets.c.helpful, tables.bullets.c.harmful).where(
                tables.bullets.c.id == bullet_id
            )
        ).one()
    return int(row.helpful), int(row.harmful)


def test_submit_acknowledges_then_the_worker_learns_exactly_once(
    service: ContextService, sqlite_url: str
) -> None:
    bullet = seed_bullet(service)
    tickets = [service.submit(trajectory(i, bullet)) for i in range(6)]
    again = service.submit(trajectory(0, bullet))  # a replayed submit adds nothing
    assert again.duplicate and again.position == tickets[0].position
    assert [t.position for t in tickets] == sorted(t.position for t in tickets)
    assert service.drain(timeout=60)
    rows = service.learn_queue("twin-a")
    assert [r.state for r in rows] == ["done"] * 6
    assert [r.version for r in rows] == sorted(r.version or 0 for r in rows)  # queue order
    successes = sum(1 for i in range(6) if i % 3)
    assert bullet_counts(sqlite_url, bullet) == (successes, 6 - successes)
    memories = service.stats("twin-a").memories
    assert memories >= 1
    for row in rows:
        assert row.result is not None
        assert f"{row.trajectory_id}:tag:{bullet}" in row.result["applied_ops"]
    service.close()


def test_the_worker_applies_its_writes_to_the_live_view(service: ContextService) -> None:
    bullet = seed_bullet(service)
    request = RetrieveRequest(query="t=1,p=1,r=3;t+p?", k_memories=3)
    assert service.retrieve("twin-a", request).memories == []  # builds the view
    service.submit(trajectory(1, bullet))
    assert service.drain(timeout=60)
    store = service.router.store_for("plant")

    def no_reload(*_args: object) -> None:
        raise AssertionError("the view reloaded from the shard")

    store.changes_since = no_reload  # type: ignore[method-assign,assignment]
    got = service.retrieve("twin-a", request)
    assert [m.memory.source.trajectory_id for m in got.memories] == ["traj-kill-00001"]
    assert got.version == store.version("plant")
    service.close()


def test_repeated_queries_are_embedded_once(service: ContextService) -> None:
    bullet = seed_bullet(service)
    calls: list[list[str]] = []
    embed = service.embed

    def counted(texts: Sequence[str]) -> list[Vector]:
        calls.append(list(texts))
        return embed(texts)

    service.query_vectors._embed = counted
    for i, query in enumerate(["a=1;a?", "b=2;b?", "a=1;a?", "a=1;a?"]):
        service.retrieve("twin-a", RetrieveRequest(query=query, k_memories=0, token_budget=64))
        # A write between reads: the result cache misses, the query's embedding does not.
        tag = TagOp(op_id=f"t{i}", bullet_id=bullet, tag="helpful")
        service.apply_delta("twin-a", Delta(ops=[tag]))
    assert calls == [["a=1;a?"], ["b=2;b?"]]
    stats = service.learning_stats()
    assert (stats["query_hits"], stats["query_misses"]) == (2, 2)


def test_submit_refuses_an_unknown_capsule(service: ContextService) -> None:
    bad = trajectory(0, "str-0000000000").model_copy(update={"capsule_id": "nobody"})
    with pytest.raises(NotFound) as raised:
        service.submit(bad)
    assert raised.value.field == "capsule_id"


def test_pending_rows_are_recovered_by_a_new_service(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    first = make_service(sqlite_url)
    bullet = seed_bullet(first)
    store = ShardStore(sqlite_url)
    for i in range(4):  # queued but never learned (no worker ran)
        store.queue.enqueue("plant", trajectory(i, bullet))
    second = make_service(sqlite_url)
    assert second.drain(timeout=60)
    assert {r.state for r in second.learn_queue("twin-a")} == {"done"}
    assert sum(bullet_counts(sqlite_url, bullet)) == 4
    second.close()


def _kill_mid_stream(url: str, bullet: str, acks_before_kill: int) -> set[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.context.submitter", url, bullet, "5000"],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        text=True,
    )
    acked: set[str] = set()
    deadline = time.monotonic() + 180
    assert child.stdout is not None
    try:
        for line in child.stdout:
            if line.startswith("ack "):
                acked.add(line.split()[1])
            if len(acked) >= acks_before_kill or time.monotonic() > deadline:
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
    assert len(acked) >= acks_before_kill, "the child did not acknowledge in time"
    return acked


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_nothing_acknowledged_is_lost_on_kill_9(
    backend: str, make_service: ServiceFactory, sqlite_url: str, request: pytest.FixtureRequest
) -> None:
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    first = make_service(url)
    bullet = seed_bullet(first)
    acked = _kill_mid_stream(url, bullet, acks_before_kill=60)
    survivor = make_service(url)
    assert survivor.drain(timeout=120)
    rows = {r.trajectory_id: r for r in survivor.learn_queue("twin-a")}
    assert acked <= set(rows), "an acknowledged trajectory is missing from the queue"
    assert {r.state for r in rows.values()} == {"done"}
    engine = get_engine(url)
    with transaction(engine) as session:
        ops = {str(r[0]) for r in session.execute(select(tables.applied_ops.c.op_id))}
        memories = {str(r[0]) for r in session.execute(select(tables.memories.c.id))}
    for tid in acked:
        result = rows[tid].result
        assert result is not None and f"{tid}:tag:{bullet}" in ops
        for memory in result["memories"]:
            assert (memory["reinforced_id"] or memory["id"]) in memories
    # Exactly once: each learned trajectory tagged the bullet once.
    assert sum(bullet_counts(url, bullet)) == len(rows)
    survivor.close()


def test_a_replica_that_did_not_write_catches_up_incrementally(
    make_service: ServiceFactory, sqlite_url: str, spy_changes_since: ChangesSpy
) -> None:
    writer, reader = make_service(sqlite_url), make_service(sqlite_url)
    bullet = seed_bullet(writer)
    request = RetrieveRequest(query="t=2,p=2,r=6;t+p?", k_memories=3)
    before = reader.retrieve("twin-a", request)
    writer.submit(trajectory(2, bullet))
    assert writer.drain(timeout=60)
    store = reader.router.store_for("plant")
    asked = spy_changes_since(store)
    after = reader.retrieve("twin-a", request)
    assert asked == [before.version]  # only the rows written since its version
    assert [m.memory.source.trajectory_id for m in after.memories] == ["traj-kill-00002"]
    writer.close()


def test_a_drain_does_not_wait_out_the_workers_linger(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    """A worker woken by a submit lingers for more submits; a drain that begins meanwhile
    cuts the linger short instead of waiting it out (it waited a whole linger before)."""
    settings = ContextSettings(tenancy_ttl_s=0, learn_linger_s=30.0, learning_process=False)
    service = make_service(sqlite_url, settings=settings)
    bullet = seed_bullet(service)
    service.start_learning()
    service.drain(timeout=60)  # the worker started and is idle
    service.submit(trajectory(0, bullet))  # wakes it: it lingers 30 s for more
    time.sleep(0.3)
    started = time.monotonic()
    assert service.drain(timeout=60)
    assert time.monotonic() - started < 10
    assert [r.state for r in service.learn_queue("twin-a")] == ["done"]
    service.close()
