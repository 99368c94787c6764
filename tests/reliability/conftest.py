"""Fixtures of the reliability tests: a Redis of the test's own, and two context-service
replicas over one Postgres database and that Redis with a bullet seeded, the setup both
Redis fault tests start from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.context.conftest import ServiceProcess, register_capsules
from tests.reliability.servers import ThrowawayRedis, clean_env
from trifecta.core.db import get_engine
from trifecta.fleet.keys import KeyStore


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    """A redis-server of this test alone, to pause, kill and restart."""
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
            replicas.append(ServiceProcess(env, tmp_path / f"replica-{i}.log", admin_key))
        for replica in replicas:
            replica.wait_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


def helpful(http: httpx.Client) -> int:
    """The helpful count of the first bullet of twin-a's playbook, as this replica serves it."""
    bullets = http.get("/capsules/twin-a/playbook").raise_for_status().json()["bullets"]
    return int(bullets[0]["helpful"])


def tag(http: httpx.Client, bullet: str, op_id: str) -> None:
    """One acknowledged write: a helpful tag on `bullet`."""
    http.post(
        "/capsules/twin-a/deltas",
        json={"ops": [{"op": "TAG", "op_id": op_id, "bullet_id": bullet, "tag": "helpful"}]},
    ).raise_for_status()


@dataclass
class SeededReplicas:
    """Replica A (`writer`) and B (`reader`) over `redis`; B has read `bullet` (helpful 0)
    and holds that result under the version Redis has."""

    replicas: list[ServiceProcess]
    writer: httpx.Client
    reader: httpx.Client
    redis: ThrowawayRedis
    bullet: str


@pytest.fixture
def seeded_replicas(
    tmp_path: Path, postgres_url: str, own_redis: ThrowawayRedis
) -> Iterator[SeededReplicas]:
    with (
        started_replicas(tmp_path, postgres_url, own_redis.url) as replicas,
        httpx.Client(base_url=replicas[0].url, headers=replicas[0].headers, timeout=30) as writer,
        httpx.Client(base_url=replicas[1].url, headers=replicas[1].headers, timeout=30) as reader,
    ):
        added = writer.post(
            "/capsules/twin-a/deltas",
            json={"ops": [{"op": "ADD", "op_id": "seed", "section": "checks", "content": "Tag."}]},
        ).raise_for_status()
        seeded = SeededReplicas(replicas, writer, reader, own_redis, added.json()["added"][0])
        assert helpful(reader) == 0  # B caches the version Redis holds
        yield seeded
