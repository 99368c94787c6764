"""Two context-service replicas sharing a database and a Redis of this test's own, with
Redis paused (SIGSTOP: up but not answering) for 10 s and then killed and restarted.

While Redis is away: every request is answered, `/health` answers fast, reads go on at a
rate that does not collapse, and each write that returned 200 on one replica is read on the
other. When Redis comes back: the other replica never answers with a result older than a
write that returned 200 (the writer could not publish its version while Redis was paused;
it republishes it, and the reader checks versions against the shard once)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.context.conftest import ServiceProcess, register_capsules
from tests.reliability.servers import ThrowawayRedis, clean_env
from trifecta.core.db import get_engine
from trifecta.fleet.keys import KeyStore

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres]
PAUSE_S = 10.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@contextmanager
def started_replicas(
    tmp_path: Path, database_url: str, redis_url: str
) -> Iterator[list[ServiceProcess]]:
    """Two context-service replicas on one database and one Redis; stopped however the test ends."""
    replicas: list[ServiceProcess] = []
    try:
        start_replicas(tmp_path, database_url, redis_url, into=replicas)
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


def start_replicas(
    tmp_path: Path, database_url: str, redis_url: str, into: list[ServiceProcess]
) -> None:
    register_capsules(database_url)
    admin_key = KeyStore(get_engine(database_url)).create(admin=True).token
    env = clean_env(
        TRIFECTA_DATA_DIR=str(tmp_path / "data"),
        TRIFECTA_CONFIG=str(tmp_path / "absent.toml"),
        TRIFECTA_DATABASE_URL=database_url,
        TRIFECTA_REDIS_URL=redis_url,
        TRIFECTA_CONTEXT_TENANCY_TTL_S="30",  # the tenancy answer stays in memory
    )
    for i in range(2):  # recorded as started at once, so a failed start still stops the other
        into.append(ServiceProcess(env, tmp_path / f"replica-{i}.log", admin_key))
    for replica in into:
        replica.wait_ready()


@dataclass
class Readers:
    """Threads reading the playbook from both replicas, counting answers per second."""

    replicas: list[ServiceProcess]
    answered: list[float] = field(default_factory=list)  # completion times
    failed: int = 0
    health_s: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._read, args=(r,), daemon=True) for r in self.replicas
        ]
        threads.append(threading.Thread(target=self._health, daemon=True))
        for thread in threads:
            thread.start()
        return threads

    def _read(self, replica: ServiceProcess) -> None:
        with httpx.Client(base_url=replica.url, headers=replica.headers, timeout=30) as http:
            while not self.stop.is_set():
                answer = http.get("/capsules/twin-b/playbook")
                if answer.status_code == 200:
                    self.answered.append(time.monotonic())
                else:
                    self.failed += 1

    def _health(self) -> None:
        with httpx.Client(base_url=self.replicas[0].url, timeout=30) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                http.get("/health").raise_for_status()
                self.health_s.append((started, time.monotonic() - started))
                time.sleep(0.2)

    def rate(self, start: float, end: float) -> float:
        return sum(start <= t < end for t in self.answered) / (end - start)


def helpful(http: httpx.Client) -> int:
    bullets = http.get("/capsules/twin-a/playbook").raise_for_status().json()["bullets"]
    return int(bullets[0]["helpful"])


def tag(http: httpx.Client, bullet: str, op_id: str) -> None:
    http.post(
        "/capsules/twin-a/deltas",
        json={"ops": [{"op": "TAG", "op_id": op_id, "bullet_id": bullet, "tag": "helpful"}]},
    ).raise_for_status()


def test_redis_paused_then_killed_stays_fast_and_coherent(
    tmp_path: Path, postgres_url: str, own_redis: ThrowawayRedis
) -> None:
    with (
        started_replicas(tmp_path, postgres_url, own_redis.url) as (a, b),
        httpx.Client(base_url=a.url, headers=a.headers, timeout=30) as writer,
        httpx.Client(base_url=b.url, headers=b.headers, timeout=30) as reader,
    ):
        added = writer.post(
            "/capsules/twin-a/deltas",
            json={"ops": [{"op": "ADD", "op_id": "seed", "section": "checks", "content": "Tag."}]},
        ).raise_for_status()
        bullet = added.json()["added"][0]
        writer.post(  # a second domain for the background readers
            "/capsules/twin-b/deltas",
            json={"ops": [{"op": "ADD", "op_id": "g0", "section": "checks", "content": "Grid."}]},
        ).raise_for_status()
        acknowledged = 0
        assert helpful(reader) == acknowledged  # B caches the version Redis holds

        readers = Readers([a, b])
        threads = readers.run()
        time.sleep(3)
        before = (time.monotonic() - 3, time.monotonic())

        # -- Redis paused: up, accepting connections, answering nothing -----------------
        own_redis.pause()
        paused_at = time.monotonic()
        stale_during: list[tuple[int, int]] = []
        while time.monotonic() < paused_at + PAUSE_S:
            tag(writer, bullet, f"p{acknowledged}")
            acknowledged += 1
            seen = helpful(reader)
            if seen != acknowledged:
                stale_during.append((acknowledged, seen))
            time.sleep(0.25)
        during = (paused_at + 1, time.monotonic())  # the first second trips the breakers
        # The last write of the pause could not be published: Redis still holds an older
        # version. Resume, and read on B at once and for three seconds.
        own_redis.resume()
        resumed_at = time.monotonic()
        stale_after: list[tuple[int, int]] = []
        while time.monotonic() < resumed_at + 3:
            seen = helpful(reader)
            if seen != acknowledged:
                stale_after.append((acknowledged, seen))
        after = (resumed_at, time.monotonic())

        # -- Redis killed, then back empty on the same port ------------------------------
        own_redis.kill()
        for i in range(6):
            tag(writer, bullet, f"k{i}")
            acknowledged += 1
            assert helpful(reader) == acknowledged
        own_redis.start()
        time.sleep(1.5)  # past the breaker's retry interval: both replicas use Redis again
        for i in range(6):
            tag(writer, bullet, f"r{i}")
            acknowledged += 1
            assert helpful(reader) == acknowledged
        readers.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        stats_a = writer.get("/health").json()["cache_stats"]
        stats_b = reader.get("/health").json()["cache_stats"]

    rates = {name: readers.rate(*span) for name, span in (("before", before), ("during", during))}
    worst_health = max(s for t, s in readers.health_s if paused_at <= t < resumed_at)
    print(  # the figures RELIABILITY.md quotes
        f"reads/s before {rates['before']:.1f} paused {rates['during']:.1f} "
        f"after {readers.rate(*after):.1f}; /health worst while paused {worst_health:.3f} s "
        f"median {statistics.median(s for _t, s in readers.health_s):.3f} s; "
        f"writes acknowledged {acknowledged}; A {stats_a}; B {stats_b}"
    )
    assert stale_during == [] and stale_after == []
    assert readers.failed == 0
    assert worst_health < 1.0
    assert rates["during"] >= 0.25 * rates["before"]
    assert stats_a["redis_recoveries"] >= 1 and stats_b["redis_recoveries"] >= 1
    assert stats_a["redis_open"] == 0 and stats_b["redis_open"] == 0
