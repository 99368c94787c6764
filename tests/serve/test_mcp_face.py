"""The trifecta's MCP face on a live `trifecta serve` app, through the official `mcp.Client`
over streamable HTTP: every tool, bad input answered with an error result naming the field
(and the server still serving afterwards), and `GET /v1/resolve` answering 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

from tests.support import live_server
from trifecta.core import db
from trifecta.core.settings import Settings
from trifecta.core.tasks import normalize_answer, solve
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.orchestrator.stack import Stack, build_cognitive
from trifecta.serve.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TWIN = Capsule(id="mcp-twin", name="MCP twin", kind="digital_twin", domain="mcp-energy")
GOV = Capsule(
    id="mcp-gov", name="MCP gov", kind="sovereign", domain="sov-eu-mcp", jurisdiction="eu"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Stack, str]]:
    data = Path(tmp_path_factory.mktemp("mcp-face"))
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
    # the tiers loaded once, shared by the loop and the OpenAI API (as `trifecta serve` does)
    stack = Stack(
        settings=settings, capsules=[TWIN, GOV], cognitive=build_cognitive(settings, "dev")
    )
    keys = KeyStore(stack.engine)
    admin = keys.create(admin=True).token
    app = create_app(stack, auth=keys)
    try:
        with live_server(app) as url:
            yield url, stack, admin
    finally:
        stack.close()
        db.dispose_engines()


@pytest.fixture(scope="module")
def base_url(served: tuple[str, Stack, str]) -> str:
    return served[0]


@pytest.fixture(scope="module")
def admin_key(served: tuple[str, Stack, str]) -> str:
    return served[2]


def _mcp(base_url: str, key: str) -> Client:
    """The official client, sending the key (the admin's may act for any capsule)."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    return Client(streamable_http_client(f"{base_url}/mcp", http_client=http))


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def test_every_tool_through_the_official_client(base_url: str, admin_key: str) -> None:
    async def scenario() -> dict[str, Any]:
        async with _mcp(base_url, admin_key) as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            task = await client.call_tool(
                "run_task", {"capsule_id": TWIN.id, "prompt": "t=41,p=17;t+p?"}
            )
            for _ in range(100):  # learning is drained off the request path: wait for it
                search = await client.call_tool(
                    "search_context", {"capsule_id": TWIN.id, "query": "t=41,p=17;t+p?", "k": 5}
                )
                if search.is_error or search.structured_content["hits"]:
                    break
                await anyio.sleep(0.1)
            playbook = await client.call_tool("show_playbook", {"capsule_id": GOV.id})
            plan = await client.call_tool("show_plan", {"max_assignments": 1})
            status = await client.call_tool("fleet_status", {})
            resolved = await client.call_tool(
                "resolve_capsule", {"uri": "capsule://sovereign/sov-eu-mcp/task"}
            )
            return {
                "tools": tools,
                **{
                    name: result
                    for name, result in [
                        ("task", task),
                        ("search", search),
                        ("playbook", playbook),
                        ("plan", plan),
                        ("status", status),
                        ("resolved", resolved),
                    ]
                },
            }

    got = anyio.run(scenario)
    assert got["tools"] == {
        "run_task",
        "search_context",
        "show_playbook",
        "show_plan",
        "fleet_status",
        "resolve_capsule",
    }
    for name in ("task", "search", "playbook", "plan", "status", "resolved"):
        assert not got[name].is_error, (name, _text(got[name]))
    task = got["task"].structured_content
    assert task["capsule_id"] == TWIN.id and task["route"] in ("cache", "edge", "cognitive")
    # A worked answer ("41+17=58") is read by its final step, as the verifier reads it.
    assert task["learned"] is True and task["verified"] == (
        normalize_answer(task["answer"]) == solve("t=41,p=17;t+p?")
    )
    search = got["search"].structured_content
    assert search["domain"] == "mcp-energy"
    assert any(hit["memory"]["outcome"] in ("success", "failure") for hit in search["hits"])
    assert got["playbook"].structured_content["domain"] == "sov-eu-mcp"
    plan = got["plan"].structured_content
    assert plan["cost_per_hour"] > 0 and len(plan["assignments"]) == 1
    environments = {e["name"]: e for e in got["status"].structured_content["environments"]}
    assert environments["sovereign"]["jurisdiction"] == "eu" and environments["sovereign"]["up"]
    assert "cognitive" in environments["inference"]["services"]
    assert sum(e["served"] for e in environments.values()) >= 2  # the task and the search
    resolved = got["resolved"].structured_content
    assert (resolved["where"], resolved["capsule_id"]) == ("local", GOV.id)


@pytest.mark.parametrize(
    ("tool", "arguments", "needle"),
    [
        ("run_task", {"capsule_id": "nobody", "prompt": "1+1?"}, "capsule_id"),
        ("run_task", {"capsule_id": TWIN.id, "prompt": ""}, "prompt"),
        ("run_task", {"capsule_id": TWIN.id, "prompt": "1+1?", "max_tokens": 0}, "max_tokens"),
        ("run_task", {"capsule_id": "Not A Slug", "prompt": "1+1?"}, "capsule_id"),
        ("run_task", {"prompt": "1+1?"}, "capsule_id"),
        ("search_context", {"capsule_id": TWIN.id, "query": "x", "k": 0}, "k"),
        ("search_context", {"capsule_id": TWIN.id, "query": "x", "outcome": "maybe"}, "outcome"),
        ("show_playbook", {"capsule_id": "nobody"}, "capsule_id"),
        ("show_plan", {"max_assignments": -1}, "max_assignments"),
        ("resolve_capsule", {"uri": "capsule://local/energy/task/x.y"}, "uri.version"),
        ("resolve_capsule", {"uri": "capsule://inference/sov-eu-mcp/task"}, "uri.domain"),
    ],
)
def test_bad_input_is_an_error_result(
    base_url: str, admin_key: str, tool: str, arguments: dict[str, Any], needle: str
) -> None:
    async def call() -> tuple[Any, Any]:
        async with _mcp(base_url, admin_key) as client:
            bad = await client.call_tool(tool, arguments)
            after = await client.call_tool("fleet_status", {})  # the server still serves
            return bad, after

    bad, after = anyio.run(call)
    assert bad.is_error and needle in _text(bad), _text(bad)
    assert not after.is_error


def test_resolve_over_http(base_url: str, admin_key: str) -> None:
    admin = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=base_url, timeout=30, headers=admin) as http:
        ok = http.get("/v1/resolve", params={"uri": "capsule://local/mcp-energy/search"})
        assert ok.status_code == 200 and ok.json()["capsule_id"] == TWIN.id
        bad = http.get("/v1/resolve", params={"uri": "capsule://local/mcp-energy/fly"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "uri.operation"
        missing = http.get("/v1/resolve", params={"uri": "capsule://local/nothing-here/task"})
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "uri.domain"


def test_fleet_status_shows_an_environment_taken_down(served: tuple[str, Stack, str]) -> None:
    url, stack, admin_key = served

    async def status() -> dict[str, Any]:
        async with _mcp(url, admin_key) as client:
            result = await client.call_tool("fleet_status", {})
        assert not result.is_error, _text(result)
        return {e["name"]: e for e in result.structured_content["environments"]}

    stack.bridge.set_fault("edge-us", down=True, latency_ms=20)
    try:
        down = anyio.run(status)["edge-us"]
    finally:
        stack.bridge.set_fault("edge-us", down=False, latency_ms=0)
    assert down["up"] is False and down["fault"] == "down, +20 ms" and down["services"] == []
    up = anyio.run(status)["edge-us"]
    assert up["up"] is True and up["fault"] == "none" and up["services"] == ["edge", "tensorlogic"]
    assert up["edge_nodes"] >= 1
