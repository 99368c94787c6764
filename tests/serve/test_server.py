"""`trifecta serve` over real HTTP on loopback: a capsule task, its feedback and the learning it
causes, the OpenAI-compatible API through the official client, the mounted context service,
the control plane, Prometheus, and 4xx errors that name the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import live_server
from trifecta.cognitive.serving.factory import build_service
from trifecta.core import db
from trifecta.core.settings import Settings
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.orchestrator.stack import Stack
from trifecta.serve.app import create_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = Path(tmp_path_factory.mktemp("serve"))
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
    stack = Stack(settings=settings)
    stack.warm_up()
    keys = KeyStore(stack.engine)
    admin = keys.create(admin=True).token
    app = create_app(
        stack,
        cognitive=build_service(tiers=["small", "medium"], phase=stack.phase),
        auth=keys,
    )
    try:
        with live_server(app) as url:
            yield url, admin
    finally:
        stack.close()
        db.dispose_engines()


@pytest.fixture(scope="module")
def base_url(served: tuple[str, str]) -> str:
    return served[0]


@pytest.fixture(scope="module")
def admin(served: tuple[str, str]) -> dict[str, str]:
    """The admin key's header (it may act for any capsule)."""
    return {"Authorization": f"Bearer {served[1]}"}


def test_task_feedback_and_the_learning_it_causes(base_url: str, admin: dict[str, str]) -> None:
    with httpx.Client(base_url=base_url, timeout=60, headers=admin) as http:
        capsule = Capsule(id="http-twin", name="HTTP twin", kind="digital_twin", domain="http")
        assert http.post("/v1/capsules", json=capsule.model_dump(mode="json")).status_code == 201
        made = http.post(f"/v1/capsules/{capsule.id}/tasks", json={"prompt": "t=41,p=17;t+p?"})
        assert made.status_code == 201, made.text
        task = made.json()
        assert task["route"] in ("edge", "cognitive") and task["learned"] is True
        assert task["cost"]["usd"] > 0 and task["context"]["domain"] == "http"
        again = http.get(f"/v1/capsules/{capsule.id}/tasks/{task['id']}")
        assert again.json()["answer"] == task["answer"]
        playbook = http.get(f"/context/capsules/{capsule.id}/playbook").json()
        memories_before = http.post(
            f"/context/capsules/{capsule.id}/memories/search",
            json={"query": "t=41,p=17;t+p?", "k": 50},
        ).json()["hits"]
        verdict = http.post(
            f"/v1/capsules/{capsule.id}/tasks/{task['id']}/feedback",
            json={"success": False, "detail": "the sum is 58"},
        )
        assert verdict.status_code == 200, verdict.text
        assert verdict.json()["outcome"] == "failure"
        assert verdict.json()["playbook_version"] > playbook["version"]
        memories_after = http.post(
            f"/context/capsules/{capsule.id}/memories/search",
            json={"query": "t=41,p=17;t+p?", "k": 50},
        ).json()["hits"]
        lessons = [h for h in memories_after if h["memory"]["outcome"] == "failure"]
        assert lessons and len(memories_after) >= len(memories_before)
        ledger = http.get("/v1/ledger", params={"by": "capsule_id"}).json()
        assert any(row["key"] == capsule.id and row["usd"] > 0 for row in ledger)


def test_openai_client_round_trip(served: tuple[str, str]) -> None:
    base_url, key = served
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key)
    assert {"small", "medium"} <= {m.id for m in client.models.list().data}
    out = client.completions.create(model="small", prompt="41+17?", max_tokens=4, logprobs=2)
    assert out.choices[0].logprobs is not None and out.choices[0].logprobs.tokens


def test_control_plane_and_metrics(base_url: str, admin: dict[str, str]) -> None:
    with httpx.Client(base_url=base_url, timeout=60, headers=admin) as http:
        plan = http.get("/v1/plan").json()
        assert plan["phase"] == "dev" and plan["cost_per_hour"] < 5
        assert {e["name"] for e in http.get("/v1/topology").json()["environments"]} >= {
            "inference",
            "sovereign",
            "edge",
        }
        capsules = http.get("/v1/capsules", params={"kind": "sovereign"}).json()
        assert capsules and all(c["kind"] == "sovereign" for c in capsules)
        http.post(f"/v1/capsules/{capsules[0]['id']}/tasks", json={"prompt": "12+30?"})
        metrics = http.get("/metrics").text
        assert "trifecta_requests_total" in metrics and "trifecta_cost_usd_total" in metrics
        health = http.get("/healthz").json()
        assert health["status"] == "ok" and all(n >= 1 for n in health["edge_nodes"].values())
        paths = http.get("/openapi.json").json()["paths"]
        assert "/v1/capsules/{capsule_id}/tasks" in paths and "/v1/completions" in paths


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("post", "/v1/capsules/nobody/tasks", {"prompt": "1+1?"}, 404, "capsule_id"),
        ("post", "/v1/capsules/dt-energy-0000/tasks", {"prompt": ""}, 422, "prompt"),
        (
            "post",
            "/v1/capsules/dt-energy-0000/tasks",
            {"prompt": "1+1?", "max_tokens": 0},
            422,
            "max_tokens",
        ),
        (
            "post",
            "/v1/capsules/dt-energy-0000/tasks/req-none/feedback",
            {"success": True},
            404,
            "task_id",
        ),
        (
            "post",
            "/v1/capsules",
            {"id": "Bad Id", "name": "x", "kind": "digital_twin", "domain": "d"},
            422,
            "id",
        ),
        ("get", "/v1/ledger?by=colour", None, 422, "by"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    base_url: str,
    admin: dict[str, str],
    method: str,
    path: str,
    body: object,
    status: int,
    field: str,
) -> None:
    with httpx.Client(base_url=base_url, timeout=60, headers=admin) as http:
        answer = http.request(method, path, json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["field"] == field


def test_oversize_body_is_413(base_url: str, admin: dict[str, str]) -> None:
    with httpx.Client(base_url=base_url, timeout=60, headers=admin) as http:
        answer = http.post(
            "/v1/capsules/dt-energy-0000/tasks",
            content=b"x" * (2 << 20),
            headers={"content-type": "application/json"},
        )
    assert answer.status_code == 413
