"""The ReasoningBank service over real HTTP on loopback: routes, OpenAPI, 4xx JSON errors."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.context.conftest import ServiceFactory
from tests.support import live_server
from trifecta.context.facade import ContextService
from trifecta.context.service import create_app
from trifecta.context.settings import ContextSettings
from trifecta.core.auth import AllowLocal


@pytest.fixture
def http(make_service: ServiceFactory, sqlite_url: str) -> Iterator[httpx.Client]:
    settings = ContextSettings(tenancy_ttl_s=0, max_body_bytes=64_000, max_ops_per_delta=50)
    service: ContextService = make_service(sqlite_url, settings=settings)
    with (
        live_server(create_app(service, auth=AllowLocal())) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def test_openapi_documents_every_route(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path in [
        "/capsules/{capsule_id}/playbook",
        "/capsules/{capsule_id}/playbook/render",
        "/capsules/{capsule_id}/deltas",
        "/capsules/{capsule_id}/retrieve",
        "/capsules/{capsule_id}/memories",
        "/capsules/{capsule_id}/memories/search",
        "/trajectories",
        "/trajectories/queue",
        "/shards",
        "/shards/{domain}/move",
        "/shards/{domain}/shares",
    ]:
        assert path in paths, path


def test_playbook_delta_render_and_retrieve(http: httpx.Client) -> None:
    delta = {
        "ops": [
            {
                "op": "ADD",
                "op_id": "a1",
                "section": "strategies",
                "content": "Read the sensor first.",
            },
            {
                "op": "ADD",
                "op_id": "a2",
                "section": "pitfalls",
                "content": "Minus binds to one term.",
            },
        ]
    }
    applied = http.post("/capsules/twin-a/deltas", json=delta).json()
    assert applied["applied"] == ["a1", "a2"] and len(applied["added"]) == 2
    assert http.post("/capsules/twin-a/deltas", json=delta).json()["skipped"] == ["a1", "a2"]
    tag = {
        "ops": [{"op": "TAG", "op_id": "t1", "bullet_id": applied["added"][1], "tag": "helpful"}]
    }
    http.post("/capsules/twin-a/deltas", json=tag)
    view = http.get("/capsules/twin-a/playbook").json()
    assert view["version"] == 2 and {b["helpful"] for b in view["bullets"]} == {0, 1}
    rendered = http.post("/capsules/twin-a/playbook/render", json={"token_budget": 100}).json()
    assert rendered["bullets"][0]["bullet"]["id"] == applied["added"][1]  # the helpful one leads
    assert applied["added"][0] in rendered["prompt"]
    http.post(
        "/capsules/twin-a/memories",
        json={
            "items": [
                {
                    "title": "lookup",
                    "content": "Return the named sensor's value.",
                    "outcome": "success",
                }
            ]
        },
    )
    got = http.post(
        "/capsules/twin-a/retrieve", json={"query": "t=4,p=9;p?", "k_memories": 2}
    ).json()
    assert got["memories"][0]["memory"]["outcome"] == "success"
    assert {b["bullet"]["id"] for b in got["bullets"]} == set(applied["added"])


def test_learn_over_http_is_idempotent(http: httpx.Client) -> None:
    added = http.post(
        "/capsules/twin-a/deltas",
        json={
            "ops": [
                {
                    "op": "ADD",
                    "op_id": "a1",
                    "section": "strategies",
                    "content": "Read the sensor first.",
                }
            ]
        },
    ).json()
    trajectory = {
        "id": "traj-http-1",
        "capsule_id": "twin-a",
        "prompt": "t=41,p=17;p?",
        "answer": "41",
        "outcome": "failure",
        "judge": "verifier",
        "verdict_detail": "expected 17",
        "task_kind": "lookup",
        "bullet_ids": added["added"],
        "steps": [{"layer": "edge", "tier": "node-1", "mean_entropy": 0.9}],
    }
    first = http.post("/trajectories", json=trajectory).json()
    assert first["modes"] == {
        "reflector": "outcome_signal",
        "curator": "outcome_signal",
        "extractor": "outcome_signal",
    }
    assert first["reflection"]["tags"] == [{"bullet_id": added["added"][0], "tag": "harmful"}]
    assert [m["status"] for m in first["memories"]] == ["added"]
    memory = http.post(
        "/capsules/twin-a/memories/search", json={"query": "lookup", "outcome": "failure"}
    ).json()
    lesson = memory["hits"][0]["memory"]
    assert lesson["source"]["trajectory_id"] == "traj-http-1" and "expected 17" in lesson["content"]
    again = http.post("/trajectories", json=trajectory).json()
    assert again["delta"]["skipped"] and [m["status"] for m in again["memories"]] == ["exists"]
    assert http.get("/capsules/twin-a/playbook").json()["bullets"][0]["harmful"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"ops": [{"op": "TAG", "op_id": "t", "bullet_id": "NOT AN ID", "tag": "helpful"}]},
            "ops[0].TAG.bullet_id",
        ),
        ({"ops": [{"op": "MERGE", "op_id": "t"}]}, "ops[0]"),
        (
            {"ops": [{"op": "TAG", "op_id": "t", "bullet_id": "str-00000000", "tag": "useful"}]},
            "ops[0].TAG.tag",
        ),
        ({"ops": []}, "ops"),
        ({"ops": [{"op": "UPDATE", "op_id": "u", "bullet_id": "str-00000000"}]}, "ops[0].UPDATE"),
    ],
)
def test_malformed_deltas_get_422_naming_the_field(
    http: httpx.Client, body: dict, field: str
) -> None:
    response = http.post("/capsules/twin-a/deltas", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_bad_references_and_limits(http: httpx.Client) -> None:
    missing = http.post(
        "/capsules/twin-a/deltas",
        json={"ops": [{"op": "TAG", "op_id": "t", "bullet_id": "str-00000000", "tag": "helpful"}]},
    )
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "ops[0].bullet_id"
    many = {
        "ops": [{"op": "REMOVE", "op_id": f"r{i}", "bullet_id": "str-00000000"} for i in range(51)]
    }
    too_many = http.post("/capsules/twin-a/deltas", json=many)
    assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "ops"
    huge = {
        "ops": [{"op": "ADD", "op_id": "big", "section": "strategies", "content": "x" * 70_000}]
    }
    oversize = http.post("/capsules/twin-a/deltas", json=huge)
    assert oversize.status_code == 413 and oversize.json()["error"]["field"] == "body"
    assert http.get("/capsules/nobody/playbook").status_code == 404
    assert http.get("/capsules/Not%20A%20Slug/playbook").status_code == 422
    # Nothing stored was lost by the refused requests.
    assert http.get("/capsules/twin-a/playbook").json()["bullets"] == []


def test_a_queued_trajectory_is_acknowledged_then_learned(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    service = make_service(sqlite_url)
    body = {
        "id": "traj-http-1",
        "capsule_id": "twin-a",
        "prompt": "t=4,p=2;t+p?",
        "answer": "6",
        "outcome": "success",
        "judge": "verifier",
    }
    with (
        live_server(create_app(service, auth=AllowLocal())) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        ticket = client.post("/trajectories/queue", json=body)
        assert ticket.status_code == 202
        assert ticket.json()["domain"] == "plant" and not ticket.json()["duplicate"]
        assert client.post("/trajectories/queue", json=body).json()["duplicate"]
        bad = client.post("/trajectories/queue", json=body | {"capsule_id": "nobody"})
        assert bad.status_code == 404 and bad.json()["error"]["field"] == "capsule_id"
    assert service.drain(timeout=60)
    assert [r.state for r in service.learn_queue("twin-a")] == ["done"]
    assert service.stats("twin-a").memories == 1
    service.close()
