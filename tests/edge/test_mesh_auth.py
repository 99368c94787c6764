"""The federation credential between the mesh and a node process, from the receiving side: the
node answers 401 to a request or an artifact push without the credential (or with a wrong one)
and stores nothing; a mesh that presents it syncs the model and is served."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

from trifecta.edge.mesh import EdgeMesh
from trifecta.edge.mesh_auth import peer_headers
from trifecta.edge.node import NodeStatus
from trifecta.edge.processes import NodeProcess
from trifecta.edge.store import sha256_hex

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CREDENTIAL = "edge-federation-secret-of-this-test"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "stranger", "version": "0"},
    },
}


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeProcess]:
    monkeypatch.setenv("TRIFECTA_FEDERATION_CREDENTIAL", CREDENTIAL)  # the node inherits it
    process = NodeProcess("guarded", tmp_path / "node").start()
    try:
        yield process.wait_ready(timeout_s=120)
    finally:
        process.stop()


def _call(url: str, credential: str | None, tool: str, arguments: dict[str, Any]) -> Any:
    async def call() -> Any:
        http = create_mcp_http_client(headers=peer_headers(credential))
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            return await client.call_tool(tool, arguments)

    return anyio.run(call)


def test_a_node_refuses_unauthenticated_peers_and_serves_the_mesh(
    node: NodeProcess, tmp_path: Path, small_artifact_path: Path
) -> None:
    for authorization in (None, "Bearer wrong", CREDENTIAL):
        headers = {"Accept": "application/json, text/event-stream"}
        if authorization:
            headers["Authorization"] = authorization
        answer = httpx.post(node.url, json=INITIALIZE, headers=headers, timeout=10)
        assert answer.status_code == 401, (authorization, answer.text)
        assert answer.json()["error"]["field"] == "authorization"

    data = small_artifact_path.read_bytes()
    push = {
        "kind": "model",
        "name": "edge-model",
        "sha256": sha256_hex(data),
        "data_base64": base64.b64encode(data).decode(),
    }
    for stranger in (None, "wrong"):  # the official MCP client, as an intruder would use it
        with pytest.raises(Exception):  # noqa: B017 - the SDK's own error for a 401
            _call(node.url, stranger, "put_artifact", push)
        with pytest.raises(Exception):  # noqa: B017
            _call(node.url, stranger, "generate", {"prompts": ["1+1?"]})
    status = NodeStatus.model_validate(_call(node.url, CREDENTIAL, "status", {}).structured_content)
    assert status.inventory == [] and status.model_sha256 is None  # nothing was stored

    with EdgeMesh(tmp_path / "stranger", heartbeat_s=0.2) as uncredentialed:  # no credential
        uncredentialed.add_node(node.url)
        uncredentialed.publish_file("model", small_artifact_path, "edge-model")
        assert not uncredentialed.wait_until(lambda m: m.healthy_count() > 0, timeout_s=3)
    with EdgeMesh(tmp_path / "mesh", heartbeat_s=0.2, credential=CREDENTIAL) as mesh:
        mesh.add_node(node.url)
        model = mesh.publish_file("model", small_artifact_path, "edge-model")
        assert mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), 120)
        served = mesh.offload(None, ["41+17?"], max_new_tokens=4)
        assert served.offloaded and served.node == "guarded"
    status = NodeStatus.model_validate(_call(node.url, CREDENTIAL, "status", {}).structured_content)
    assert status.model_sha256 == model.sha256 and status.served == 1
