"""`trifecta serve` killed with SIGKILL in the middle of writes, and its Postgres restarted
under load: nothing the server acknowledged is lost.

An acknowledged task (201) is in the request log and its learning write in the learn queue;
after the restarted server drained the queue every such write was learned from; every
acknowledged feedback (200) is recorded. On SQLite (WAL) and on Postgres."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.servers import ServeProcess, ThrowawayPostgres
from tests.reliability.traffic import CAPSULES, Writers, drained_audit

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def own_postgres() -> Iterator[ThrowawayPostgres]:
    cluster = ThrowawayPostgres()
    cluster.start()
    yield cluster
    cluster.destroy()


def kill_mid_writes(server: ServeProcess, writers: Writers, before: int, after: int) -> int:
    """Kill the server once `before` tasks were acknowledged, restart it, wait for `after`
    more; returns how many tasks were acknowledged when it died."""
    writers.wait_for(before)
    server.kill9()
    acked_at_kill = len(writers.acks.tasks)
    server.start()
    writers.wait_for(acked_at_kill + after)
    return acked_at_kill


def summary(writers: Writers) -> str:
    acks = writers.acks
    return (
        f"{len(acks.tasks)} tasks, {len(acks.learned)} learning writes, {len(acks.feedback)} "
        f"feedbacks acknowledged; answers {dict(sorted(acks.statuses.items()))} (0: no answer)"
    )


def test_kill_9_during_writes_loses_no_acknowledged_write_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    server = ServeProcess(tmp_path / "data", url)
    server.start()
    try:
        keys = server.capsule_keys(CAPSULES)
        with Writers(server.url, keys, threads=3) as writers:
            kill_mid_writes(server, writers, before=12, after=6)
        result = drained_audit(url, writers.acks)
    finally:
        server.stop()
    print(f"sqlite kill -9: {summary(writers)}; audit {result}")
    assert result.clean, result
    assert result.queue_rows == len(writers.acks.learned) >= 18
    assert writers.acks.feedback, "no feedback was acknowledged"
    assert writers.acks.statuses[500] == 0, writers.acks.statuses


@pytest.mark.postgres
def test_postgres_restart_under_load_then_kill_9_loses_nothing(
    tmp_path: Path, own_postgres: ThrowawayPostgres
) -> None:
    server = ServeProcess(tmp_path / "data", own_postgres.url)
    server.start()
    try:
        keys = server.capsule_keys(CAPSULES)
        with Writers(server.url, keys, threads=3) as writers:
            writers.wait_for(15)
            own_postgres.stop("fast")  # drops every connection the server holds
            down_at = len(writers.acks.tasks)
            time.sleep(3)
            own_postgres.start()
            writers.wait_for(down_at + 15, timeout=120)  # the pool reconnected by itself
            kill_mid_writes(server, writers, before=len(writers.acks.tasks) + 6, after=10)
        result = drained_audit(own_postgres.url, writers.acks)
    finally:
        server.stop()
    print(f"postgres restart + kill -9: {summary(writers)}; audit {result}")
    assert result.clean, result
    assert result.queue_rows == len(writers.acks.learned)
    assert writers.acks.feedback, "no feedback was acknowledged"
    # While Postgres was down the server answered (503) or the connection failed; never 500.
    assert writers.acks.statuses[500] == 0, writers.acks.statuses
