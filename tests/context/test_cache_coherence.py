"""Two service processes on loopback share the cache through Redis: a write on one is
visible to a read on the other as soon as the write returns."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.context.conftest import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Distinct enough that none reinforces another (near-identical memories fold together).
LESSONS = [
    "Read the sensor value straight from the telemetry.",
    "Minus signs bind only to the following operand.",
    "Escalate to the large tier when entropy rises.",
    "Healthy edge nodes serve light lookups cheaply.",
    "The verifier's expected answer becomes a lesson.",
    "Sovereign data never leaves its jurisdiction.",
    "Grid telemetry often carries operands above ninety.",
    "Answer with the bare integer only.",
    "Chains of three terms fail on the second subtraction.",
    "Cached playbooks save recomputation on repeated prompts.",
    "A missing sensor in telemetry makes the prompt invalid.",
    "Keep a running total while adding from the left.",
]


def tag(client: httpx.Client, bullet: str, op_id: str) -> None:
    response = client.post(
        "/capsules/twin-a/deltas",
        json={"ops": [{"op": "TAG", "op_id": op_id, "bullet_id": bullet, "tag": "helpful"}]},
    )
    response.raise_for_status()


def helpful(client: httpx.Client, capsule: str = "twin-a") -> int:
    bullets = client.get(f"/capsules/{capsule}/playbook").raise_for_status().json()["bullets"]
    return int(bullets[0]["helpful"])


def search_titles(client: httpx.Client) -> list[str]:
    body = {"query": "sensor lookup lesson", "k": 50}
    hits = (
        client.post("/capsules/twin-a2/memories/search", json=body)
        .raise_for_status()
        .json()["hits"]
    )
    return sorted(h["memory"]["title"] for h in hits)


def exercise(a: ServiceProcess, b: ServiceProcess, rounds: int) -> tuple[dict, dict]:
    with (
        httpx.Client(base_url=a.url, timeout=60, headers=a.headers) as ca,
        httpx.Client(base_url=b.url, timeout=60, headers=b.headers) as cb,
    ):
        added = ca.post(
            "/capsules/twin-a/deltas",
            json={
                "ops": [
                    {"op": "ADD", "op_id": "c0", "section": "checks", "content": "Count the tags."}
                ]
            },
        ).json()
        bullet = added["added"][0]
        titles: list[str] = []
        for i in range(rounds):
            writer, reader = (ca, cb) if i % 2 == 0 else (cb, ca)
            assert helpful(reader) == i  # the reader caches the current version first
            assert search_titles(reader) == sorted(titles)
            tag(writer, bullet, f"t{i}")
            title = f"lesson {i:02d}"
            writer.post(
                "/capsules/twin-a/memories",
                json={"items": [{"title": title, "content": LESSONS[i], "outcome": "success"}]},
            ).raise_for_status()
            titles.append(title)
            # Immediately after the writes return, the other process sees them.
            assert helpful(reader) == i + 1
            assert helpful(reader, "twin-a2") == i + 1  # another capsule of the same domain
            assert search_titles(reader) == sorted(titles)
        # With no write in between, the second process answers from the first one's work.
        helpful(ca)
        helpful(cb)
        return ca.get("/health").json(), cb.get("/health").json()


@pytest.mark.postgres
@pytest.mark.redis
def test_write_on_one_replica_is_read_on_the_other_through_redis(
    start_services: Callable[..., list[ServiceProcess]], postgres_url: str, redis_url: str
) -> None:
    a, b = start_services(2, database_url=postgres_url, redis_url=redis_url)
    health_a, health_b = exercise(a, b, rounds=8)
    assert health_a["redis"] and health_b["redis"]
    stats = [health_a["cache_stats"], health_b["cache_stats"]]
    assert sum(s["hits"] for s in stats) > 0
    assert sum(s["shared_hits"] for s in stats) > 0  # a result one process put into Redis


def test_without_redis_each_process_still_reads_fresh_versions(
    start_services: Callable[..., list[ServiceProcess]], sqlite_url: str
) -> None:
    a, b = start_services(2, database_url=sqlite_url)
    health_a, health_b = exercise(a, b, rounds=4)
    assert not health_a["redis"] and not health_b["redis"]
    assert health_a["cache_stats"]["hits"] + health_b["cache_stats"]["hits"] > 0
