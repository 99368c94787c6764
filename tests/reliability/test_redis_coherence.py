"""Coherence when Redis comes back, seen from a replica that made no Redis call while it was
away (so its breaker never opened and it trusts Redis as soon as Redis answers).

Two context-service replicas share a database and a Redis of this test's own. Redis is
paused (SIGSTOP), replica A acknowledges writes it cannot publish, replica B stays idle;
Redis resumes and B reads in a tight loop. Then the same with Redis killed and restarted
empty. The promise (RELIABILITY.md): every read on B that starts `BOUND_S` after Redis
answers again returns every write A acknowledged. The window is A's breaker noticing Redis
and republishing its versions; the test measures it from B's answers."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.reliability.conftest import SeededReplicas, helpful, tag

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres]
BOUND_S = 0.5  # RELIABILITY.md's bound
READ_FOR_S = 2.0


def reads_after(reader: httpx.Client, since: float, expected: int) -> tuple[float, int, int]:
    """Read on the replica for READ_FOR_S; (start of the last stale read after `since`,
    stale reads, reads), the first -1.0 when no read was stale."""
    last_stale, stale, reads = -1.0, 0, 0
    while time.monotonic() < since + READ_FOR_S:
        started = time.monotonic()
        seen = helpful(reader)
        reads += 1
        if seen != expected:
            stale += 1
            last_stale = started - since
    return last_stale, stale, reads


def test_an_idle_replica_reads_writes_acknowledged_while_redis_was_away_within_the_bound(
    seeded_replicas: SeededReplicas,
) -> None:
    seeded = seeded_replicas
    writer, reader, own_redis, bullet = seeded.writer, seeded.reader, seeded.redis, seeded.bullet
    acknowledged = 0  # the seeded bullet's helpful count, read by B in the fixture

    # -- paused: A acknowledges writes it cannot publish; B makes no call -------------
    # Three pauses of different lengths: Redis resumes at a different point of A's
    # probe cycle each time.
    windows: dict[str, tuple[float, int, int]] = {}
    for cycle, pause_s in enumerate((1.0, 1.2, 1.4)):
        own_redis.pause()
        # A read trips A's breaker first. (Otherwise A's first publish sits in the paused
        # Redis's socket and runs when it resumes, which hides the window.)
        assert helpful(writer) == acknowledged
        for i in range(3):
            tag(writer, bullet, f"p{cycle}-{i}")
            acknowledged += 1
        time.sleep(pause_s)  # A's breaker is open and probing
        own_redis.resume()
        windows[f"paused-{cycle}"] = reads_after(reader, time.monotonic(), acknowledged)

    # -- killed, then restarted empty on the same port --------------------------------
    own_redis.kill()
    assert helpful(writer) == acknowledged
    for i in range(4):
        tag(writer, bullet, f"k{i}")
        acknowledged += 1
    time.sleep(1.0)
    own_redis.start()  # returns once Redis answers a ping
    windows["killed"] = reads_after(reader, time.monotonic(), acknowledged)
    assert helpful(writer) == acknowledged
    stats_a = writer.get("/health").json()["cache_stats"]
    stats_b = reader.get("/health").json()["cache_stats"]

    print(  # the figures RELIABILITY.md quotes
        "after Redis answered again, last stale read on the idle replica (s, -1 = none), "
        f"stale reads, reads: {windows}; A {stats_a}; B {stats_b}"
    )
    for case, (last_stale, _stale, reads) in windows.items():
        assert reads > 10, case
        assert last_stale < BOUND_S, (case, windows)
    assert stats_a["redis_recoveries"] >= 4  # A noticed every outage
