"""Every route of `trifecta serve`, generated from its OpenAPI spec (and the specs of the apps
it mounts), tried with no key, a revoked key, another capsule's key and the right key: only
the right key gets through, and no response to a capsule's key holds another tenant's id or
domain. A route added later without a place in the tables below fails this test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

from tests.support import live_server
from trifecta.cognitive.serving.factory import build_service
from trifecta.cognitive.serving.tenants import TenantDirectory
from trifecta.core import db
from trifecta.core.settings import Settings
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.orchestrator.stack import Stack
from trifecta.serve.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALPHA = Capsule(id="auth-alpha", name="Alpha", kind="digital_twin", domain="alpha-grid")
BETA = Capsule(id="auth-beta", name="Beta", kind="digital_twin", domain="beta-grid")
DOOMED = Capsule(id="auth-doomed", name="Doomed", kind="digital_twin", domain="doomed-grid")
# whose domain the shard-move route moves (to the local environment's configured shard)
MOVER = Capsule(id="auth-mover", name="Mover", kind="digital_twin", domain="mover-grid")
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, small
PUBLIC = {("get", "/healthz"), ("get", "/context/health")}  # liveness: no tenant's data
ANY_KEY = {  # any valid key; a capsule's key acts as its own capsule
    ("get", "/v1/models"),
    ("post", "/v1/completions"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/topology"),
}
ADMIN = {
    ("get", "/v1/capsules"),
    ("post", "/v1/capsules"),
    ("delete", "/v1/capsules/{capsule_id}"),
    ("get", "/v1/plan"),
    ("post", "/v1/plan"),
    ("get", "/v1/ledger"),
    ("get", "/v1/resolve"),
    ("get", "/v1/keys"),
    ("post", "/v1/keys"),
    ("delete", "/v1/keys/{key_id}"),
    ("get", "/context/shards"),
    ("post", "/context/shards/{domain}/move"),
    ("post", "/context/shards/{domain}/shares"),
    ("delete", "/context/shards/{domain}/shares/{grantee}"),
    ("get", "/v1/generative/placement"),
    ("post", "/v1/generative/placement/rebalance"),
}
# Routes whose right key passes authentication yet this server's state refuses the request:
# the generative experts run inside the model here, so there is no placement to rebalance.
STATE_REFUSED = {("post", "/v1/generative/placement/rebalance"): 409}
# Every other route acts for the capsule in its path or body: ALPHA's key is the right one.


def _trajectory() -> dict[str, Any]:
    return {
        "capsule_id": ALPHA.id,
        "prompt": "t=41,p=17;t+p?",
        "answer": "58",
        "outcome": "success",
    }


BODIES: dict[tuple[str, str], Any] = {
    ("post", "/v1/completions"): {"model": "small", "prompt": "41+17?", "max_tokens": 2},
    ("post", "/v1/chat/completions"): {
        "model": "small",
        "messages": [{"role": "user", "content": "41+17?"}],
        "max_tokens": 2,
    },
    ("post", "/v1/capsules/{capsule_id}/tasks"): {"prompt": "t=41,p=17;t+p?"},
    ("post", "/v1/capsules/{capsule_id}/tasks/{task_id}/feedback"): {"success": True},
    ("post", "/v1/capsules"): {
        "id": "auth-new",
        "name": "New",
        "kind": "digital_twin",
        "domain": "new-grid",
    },
    ("post", "/v1/plan"): [ALPHA.model_dump(mode="json")],
    ("post", "/v1/keys"): {"capsule_id": ALPHA.id, "label": "made over HTTP"},
    ("post", "/context/capsules/{capsule_id}/playbook/render"): {"token_budget": 256},
    ("post", "/context/capsules/{capsule_id}/deltas"): {
        "ops": [{"op": "ADD", "op_id": "auth-1", "section": "strategies", "content": "add tens"}]
    },
    ("post", "/context/capsules/{capsule_id}/retrieve"): {"query": "t=41,p=17;t+p?"},
    ("post", "/context/capsules/{capsule_id}/memories"): {
        "items": [{"title": "sum", "content": "41+17=58", "outcome": "success"}]
    },
    ("post", "/context/capsules/{capsule_id}/memories/search"): {"query": "41+17"},
    ("post", "/context/trajectories"): _trajectory(),
    ("post", "/context/trajectories/queue"): _trajectory(),
    ("post", "/context/shards/{domain}/shares"): {"grantee": BETA.domain},
    ("post", "/context/shards/{domain}/move"): {"to": "MOVE_TARGET"},
    ("post", "/v1/generative/placement/rebalance"): {},
}
QUERIES: dict[tuple[str, str], dict[str, str]] = {
    ("get", "/v1/resolve"): {"uri": "capsule://local/alpha-grid/task"},
}


@dataclass
class Served:
    app: FastAPI
    url: str
    client: httpx.Client
    store: KeyStore
    keys: dict[str, str]  # who -> Authorization header value
    data: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = Path(tmp_path_factory.mktemp("auth"))
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
    stack = Stack(settings=settings, capsules=[ALPHA, BETA, DOOMED, MOVER])
    store = KeyStore(stack.engine, hasher=CHEAP)
    tenants = TenantDirectory(stack.capsules.registry.get)
    cognitive = build_service(tiers=["small"], phase=stack.phase, tenants=tenants)
    app = create_app(stack, cognitive=cognitive, auth=store)
    tokens = {
        "admin": store.create(admin=True).token,
        "alpha": store.create(capsule_id=ALPHA.id).token,
        "beta": store.create(capsule_id=BETA.id).token,
    }
    revoked = store.create(capsule_id=ALPHA.id)
    store.revoke(revoked.key.key_id)
    tokens["revoked"] = revoked.token
    keys = {who: f"Bearer {token}" for who, token in tokens.items()}
    try:
        with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            yield Served(app, url, client, store, keys, data)
    finally:
        cognitive.close()
        stack.close()
        db.dispose_engines()


def _operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of the app's spec, which holds every mounted surface (the
    MCP face has its own test below: its body is a JSON-RPC session, not one request)."""
    return [
        (method, path, op)
        for path, ops in app.openapi()["paths"].items()
        for method, op in ops.items()
        if path != "/mcp"
    ]


def _request(served: Served, method: str, path: str, op: dict[str, Any]) -> dict[str, Any]:
    client = served.client
    params = {
        "capsule_id": DOOMED.id
        if (method, path) == ("delete", "/v1/capsules/{capsule_id}")
        else ALPHA.id,
        "domain": MOVER.domain if path.endswith("/move") else ALPHA.domain,
        "grantee": BETA.domain,
    }
    if "{task_id}" in path:
        made = client.post(
            f"/v1/capsules/{ALPHA.id}/tasks",
            json={"prompt": "t=12,p=30;t+p?"},
            headers={"Authorization": served.keys["admin"]},
        )
        params["task_id"] = made.json()["id"]
    if "{key_id}" in path:
        params["key_id"] = served.store.create(capsule_id=BETA.id).key.key_id
    url = re.sub(r"\{(\w+)\}", lambda m: params[m.group(1)], path)
    request: dict[str, Any] = {"method": method.upper(), "url": url}
    if "requestBody" in op:
        assert (method, path) in BODIES, f"add an example body for {method.upper()} {path}"
        body = BODIES[(method, path)]
        if body == {"to": "MOVE_TARGET"}:
            body = {"to": "local"}  # a configured place admitting MOVER (dev phase)
        request["json"] = body
    if (method, path) in QUERIES:
        request["params"] = QUERIES[(method, path)]
    return request


def _send(served: Served, request: dict[str, Any], who: str | None) -> Any:
    headers = {"Authorization": served.keys[who]} if who else {}
    return served.client.request(**request, headers=headers)


def _holds(text: str, *capsules: Capsule) -> list[str]:
    """The ids and domains of `capsules` that appear in `text`."""
    return [s for c in capsules for s in (c.id, c.domain) if s in text]


def test_every_route_needs_the_right_key(served: Served) -> None:
    operations = _operations(served.app)
    assert len(operations) >= 30
    tried = 0
    for method, path, op in operations:
        route = (method, path)
        request = _request(served, method, path, op)
        if route in PUBLIC:
            answer = _send(served, request, None)
            assert answer.status_code == 200 and not _holds(answer.text, ALPHA, BETA)
            continue
        for who in (None, "revoked"):
            answer = _send(served, request, who)
            assert answer.status_code == 401, (route, who, answer.text)
            assert not _holds(answer.text, ALPHA, BETA), route
        if route in ADMIN:
            for who in ("alpha", "beta"):
                answer = _send(served, request, who)
                assert answer.status_code == 403, (route, who, answer.text)
                assert not _holds(answer.text, ALPHA, BETA), route
            right = "admin"
        elif route in ANY_KEY:
            answer = _send(served, request, "beta")
            assert answer.status_code < 300, (route, answer.text)
            assert not _holds(answer.text, ALPHA), route  # BETA's key reads nothing of ALPHA
            right = "alpha"
        else:  # acts for ALPHA (path or body): BETA's key is refused, ALPHA's accepted
            answer = _send(served, request, "beta")
            assert answer.status_code == 403, (route, answer.text)
            assert not _holds(answer.text, ALPHA, BETA), route
            right = "alpha"
        answer = _send(served, request, right)
        if route in STATE_REFUSED:
            assert answer.status_code == STATE_REFUSED[route], (route, right, answer.text)
        else:
            assert answer.status_code < 300, (route, right, answer.text)
        if right == "alpha":  # nothing of BETA in what ALPHA's key reads
            assert not _holds(answer.text, BETA), route
        tried += 1
    assert tried == len(operations) - len(PUBLIC)
    assert {(m, p) for m, p, _ in operations} >= ADMIN | ANY_KEY | PUBLIC


def test_the_capsule_comes_from_the_key_not_a_header(served: Served) -> None:
    """The OpenAI API serves the key's capsule: a header naming another changes nothing."""
    body = BODIES[("post", "/v1/completions")]
    answer = served.client.post(
        "/v1/completions",
        json=body,
        headers={"Authorization": served.keys["beta"], "X-Capsule-Id": ALPHA.id},
    )
    assert answer.status_code == 200
    assert ALPHA.id not in answer.text


def test_a_removed_capsule_s_key_stops_at_once(served: Served) -> None:
    temp = Capsule(id="auth-temp", name="Temp", kind="digital_twin", domain="temp-grid")
    admin = {"Authorization": served.keys["admin"]}
    assert (
        served.client.post(
            "/v1/capsules", json=temp.model_dump(mode="json"), headers=admin
        ).status_code
        == 201
    )
    made = served.client.post("/v1/keys", json={"capsule_id": temp.id}, headers=admin)
    assert made.status_code == 201
    own = {"Authorization": f"Bearer {made.json()['token']}"}
    assert served.client.get(f"/v1/capsules/{temp.id}", headers=own).status_code == 200
    assert served.client.delete(f"/v1/capsules/{temp.id}", headers=admin).status_code == 204
    assert served.client.get("/v1/topology", headers=own).status_code == 401
    listed = served.client.get("/v1/keys", headers=admin).json()
    assert all(k["revoked_at"] for k in listed if k["capsule_id"] == temp.id)
    assert all("token" not in k and "secret_hash" not in k for k in listed)


def _mcp(url: str, key: str | None) -> Client:
    headers = {"Authorization": key} if key else {}
    http = create_mcp_http_client(headers=headers)
    return Client(streamable_http_client(f"{url}/mcp", http_client=http))


def test_the_mcp_face_needs_a_key_and_serves_only_the_key_s_capsule(served: Served) -> None:
    for who in (None, "revoked"):
        headers = {"Authorization": served.keys[who]} if who else {}
        refused = served.client.post("/mcp", json={}, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["field"] == "authorization"

    async def calls(who: str) -> dict[str, Any]:
        async with _mcp(served.url, served.keys[who]) as client:
            return {
                "own": await client.call_tool("show_playbook", {"capsule_id": BETA.id}),
                "other": await client.call_tool("show_playbook", {"capsule_id": ALPHA.id}),
                "task": await client.call_tool(
                    "run_task", {"capsule_id": ALPHA.id, "prompt": "t=1,p=2;t+p?"}
                ),
                "search": await client.call_tool(
                    "search_context", {"capsule_id": ALPHA.id, "query": "t+p"}
                ),
                "plan": await client.call_tool("show_plan", {}),
                "fleet": await client.call_tool("fleet_status", {}),
                "resolve": await client.call_tool(
                    "resolve_capsule", {"uri": "capsule://local/alpha-grid/task"}
                ),
            }

    beta = anyio.run(calls, "beta")
    assert not beta["own"].is_error and beta["own"].structured_content["domain"] == BETA.domain
    for name in ("other", "task", "search", "plan", "fleet", "resolve"):
        result = beta[name]
        text = " ".join(getattr(block, "text", "") for block in result.content)
        refusal = "does not belong to that capsule" in text or "needs the admin key" in text
        assert result.is_error and refusal, (name, text)
        assert ALPHA.id not in text and ALPHA.domain not in text
    admin = anyio.run(calls, "admin")
    for name, result in admin.items():
        text = " ".join(getattr(block, "text", "") for block in result.content)
        assert not result.is_error, (name, text)
    assert admin["task"].structured_content["capsule_id"] == ALPHA.id
