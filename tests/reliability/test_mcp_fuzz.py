"""`/mcp` of a live `trifecta serve` app under bad input.

HTTP level: no key, a body not declared JSON, not JSON, not UTF-8, nested too deep, above
the 1 MB limit (declared or streamed), not a JSON-RPC message, a foreign Host: each a 4xx
whose status and body are the ones the OpenAPI spec documents for `/mcp`.

Tool level: hypothesis (through schemathesis's generators) draws each tool's arguments from
the tool's own input schema, valid and invalid (wrong types, out of range, missing), sent
through the official `mcp.Client` over one session: no HTTP answer is a 5xx, every bad call
is an MCP error result (`isError`) of one line, no result carries a traceback, and the
server still serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from schemathesis import GenerationMode

from tests.support import live_server
from trifecta.core import db
from trifecta.core.settings import Settings
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.orchestrator.stack import Stack, build_cognitive
from trifecta.serve.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TWIN = Capsule(id="fuzz-twin", name="Fuzz twin", kind="digital_twin", domain="fuzz-energy")
EXAMPLES = 30  # per tool: six tools, one session, about a minute on a loaded 2-core box
ACCEPT = "application/json, text/event-stream"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "fuzz", "version": "1"},
    },
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data = Path(tmp_path_factory.mktemp("mcp-fuzz"))
    settings_ = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
    stack = Stack(settings=settings_, capsules=[TWIN], cognitive=build_cognitive(settings_, "dev"))
    admin = KeyStore(stack.engine).create(admin=True).token
    app = create_app(stack, auth=KeyStore(stack.engine))
    try:
        with live_server(app) as url:
            yield url, admin
    finally:
        stack.close()
        db.dispose_engines()


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with the spec's components available to its `$ref`s."""
    return {**schema, "components": spec["components"]}


def _streamed(size: int) -> Iterator[bytes]:
    chunk = b"[" + b"0," * 32_767 + b"0]"
    for _ in range(size // len(chunk) + 1):
        yield chunk


def test_http_level_bad_input_gets_the_documented_4xx(served: tuple[str, str]) -> None:
    url, admin = served
    key = {"Authorization": f"Bearer {admin}", "Accept": ACCEPT}
    as_json = {**key, "Content-Type": "application/json"}
    cases: dict[str, tuple[dict[str, str], Any]] = {
        "no key": ({"Accept": ACCEPT, "Content-Type": "application/json"}, json.dumps(INIT)),
        "revoked-looking key": (
            {**as_json, "Authorization": "Bearer tfk_not-a-key"},
            json.dumps(INIT),
        ),
        "text/plain": ({**key, "Content-Type": "text/plain"}, json.dumps(INIT)),
        "no content type": (key, json.dumps(INIT).encode()),
        "not JSON": (as_json, b"{nope"),
        "not UTF-8": (as_json, b'{"jsonrpc": "2.0", "method": "\xff\xfe"}'),
        "nested too deep": (as_json, b"[" * 50_000 + b"]" * 50_000),
        "not JSON-RPC": (as_json, json.dumps({"hello": "world"})),
        "a JSON array": (as_json, json.dumps([1, 2, 3])),
        "declared above 1 MB": (as_json, b" " * (1 << 20) + b"{}"),
        "streamed above 1 MB": (as_json, _streamed(2 << 20)),
        "foreign Host": ({**as_json, "Host": "evil.example"}, json.dumps(INIT)),
    }
    with httpx.Client(base_url=url, timeout=60) as http:
        spec = http.get("/openapi.json").raise_for_status().json()
        documented = spec["paths"]["/mcp"]["post"]["responses"]
        answers = {
            name: http.post("/mcp", headers=h, content=body) for name, (h, body) in cases.items()
        }
        still = http.post("/mcp", headers=as_json, content=json.dumps(INIT))
    summary = {name: a.status_code for name, a in answers.items()}
    print(f"/mcp HTTP-level answers: {summary}")
    for name, answer in answers.items():
        assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text[:200])
        assert str(answer.status_code) in documented, (name, answer.status_code)
        schema = documented[str(answer.status_code)]["content"]["application/json"]["schema"]
        jsonschema.validate(answer.json(), _resolve(spec, schema))
    assert summary["no key"] == summary["revoked-looking key"] == 401
    assert summary["text/plain"] == summary["no content type"] == 415
    assert answers["text/plain"].json()["error"]["field"] == "content-type"
    assert summary["declared above 1 MB"] == summary["streamed above 1 MB"] == 413
    assert {summary[n] for n in ("not JSON", "not UTF-8", "nested too deep", "not JSON-RPC")} == {
        400
    }
    assert still.status_code == 200 and still.json()["result"]["serverInfo"]["name"] == "trifecta"


def _as_openapi(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A one-operation OpenAPI document whose body is the tool's input schema, so
    schemathesis draws valid (positive) and invalid (negative) arguments from it."""
    schema = dict(schema)
    defs = schema.pop("$defs", {})
    text = json.dumps(schema).replace("#/$defs/", "#/components/schemas/")
    body = {"required": True, "content": {"application/json": {"schema": json.loads(text)}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": name, "version": "1"},
        "paths": {
            f"/{name}": {"post": {"requestBody": body, "responses": {"200": {"description": "ok"}}}}
        },
        "components": {"schemas": defs},
    }


def _arguments(name: str, schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    operation = schemathesis.openapi.from_dict(_as_openapi(name, schema))[f"/{name}"]["POST"]
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    # MCP arguments are an object; a negative case that is not one tests the client, not us.
    return cases.map(lambda case: case.body).filter(lambda body: isinstance(body, dict))


class Session:
    """One MCP session over HTTP, driven from synchronous hypothesis tests through a portal;
    every HTTP status the client saw is recorded."""

    def __init__(self, portal: BlockingPortal, url: str, key: str):
        self.portal = portal
        self.statuses: list[int] = []
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})

        async def record(response: Any) -> None:
            self.statuses.append(response.status_code)

        http.event_hooks["response"].append(record)
        self.client = Client(streamable_http_client(f"{url}/mcp", http_client=http))

    def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        return self.portal.call(lambda: self.client.call_tool(tool, arguments))


@pytest.fixture(scope="module")
def session(served: tuple[str, str]) -> Iterator[Session]:
    url, admin = served
    with start_blocking_portal() as portal:
        made = Session(portal, url, admin)
        with portal.wrap_async_context_manager(made.client):
            yield made


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


def _fuzz_tool(session: Session, name: str, schema: dict[str, Any], counts: dict[str, int]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(arguments=_arguments(name, schema))
    def fuzz(arguments: dict[str, Any]) -> None:
        result = session.call(name, arguments)
        text = _text(result)
        assert "Traceback" not in text and 'File "' not in text, text[:300]
        if result.is_error:
            counts["error"] += 1
            assert "\n" not in text.strip(), text[:300]  # one line
        else:
            counts["ok"] += 1
            assert result.structured_content is not None

    fuzz()


def test_fuzzed_tool_calls_never_fail_the_server(session: Session) -> None:
    tools = {t.name: t.input_schema for t in session.portal.call(session.client.list_tools).tools}
    assert set(tools) == {
        "run_task",
        "search_context",
        "show_playbook",
        "show_plan",
        "fleet_status",
        "resolve_capsule",
    }
    counts = {"ok": 0, "error": 0}
    for name, schema in tools.items():
        _fuzz_tool(session, name, schema, counts)
    print(f"fuzzed MCP calls: {counts}; HTTP statuses {sorted(set(session.statuses))}")
    assert all(s < 500 for s in session.statuses)
    assert counts["ok"] and counts["error"]  # both kinds were exercised
    after = session.call("fleet_status", {})
    assert not after.is_error, _text(after)


def test_a_capsule_key_is_refused_other_capsules_through_the_fuzzed_face(
    served: tuple[str, str],
) -> None:
    """A capsule's key acting for another capsule: an error result, never its data."""
    url, admin = served
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {admin}"}) as h:
        token = h.post("/v1/keys", json={"capsule_id": TWIN.id}).raise_for_status().json()["token"]

    async def call() -> Any:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            return await client.call_tool("show_playbook", {"capsule_id": "someone-else"})

    result = anyio.run(call)
    assert result.is_error and "capsule" in _text(result)
