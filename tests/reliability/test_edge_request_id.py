"""One request id across the edge hop: a task sent to the front door with `X-Request-Id` and
offloaded to an edge node process is logged by that node (its JSON log file) under the same
id, and the front door answers with it.

The mesh's MCP session to a node sends its HTTP requests from its own task, outside the
request's context, so the id travels as the `generate` tool's `request_id` argument; this
test reads it back from the node's own log, not from the mesh's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from trifecta.core import db
from trifecta.core.auth import Principal, StaticKeys
from trifecta.core.settings import Settings
from trifecta.core.tasks import generate_tasks
from trifecta.edge.processes import NodeProcess
from trifecta.orchestrator.stack import Stack
from trifecta.serve.app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CAPSULE = "dt-energy-0000"
KEY = "capsule-key-for-the-edge-hop-test"


@pytest.fixture
def front_door_over_a_node_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[TestClient, NodeProcess]]:
    monkeypatch.setenv("TRIFECTA_LOG_FORMAT", "json")  # the node process inherits it
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'c.db'}")
    stack = Stack(settings=settings)
    node = NodeProcess("edge-ids-0", tmp_path / "node", environment="edge", kind="edge")
    node.start().wait_ready(timeout_s=180)
    try:
        for name, mesh in stack.meshes.items():  # "edge" serves from the node process alone
            for state in mesh.node_states():
                mesh.remove_node(state.key)
            if name == "edge":
                mesh.add_node(node.url)
                assert mesh.wait_until(
                    lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=120
                )
        stack.warm_up()
        auth = StaticKeys({KEY: Principal(key_id="k-edge", capsule_id=CAPSULE)})
        with TestClient(create_app(stack, auth=auth)) as client:
            yield client, node
    finally:
        node.stop()
        stack.close()
        db.dispose_engines()


def node_lines(node: NodeProcess) -> list[dict[str, object]]:
    """The node's JSON log lines (its file also holds uvicorn's plain start-up lines)."""
    lines = []
    for raw in (node.data_dir / "node.log").read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


def test_an_offloaded_task_is_logged_on_the_edge_node_under_the_front_doors_id(
    front_door_over_a_node_process: tuple[TestClient, NodeProcess],
) -> None:
    client, node = front_door_over_a_node_process
    prompts = [t.prompt for t in generate_tasks(12, seed=5, split="heldout", difficulties=[1])]
    offloaded: list[str] = []
    others: list[str] = []
    for i, prompt in enumerate(prompts):
        request_id = f"edge-hop-{i:04d}"
        answer = client.post(
            f"/v1/capsules/{CAPSULE}/tasks",
            json={"prompt": prompt},
            headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": request_id},
        )
        assert answer.status_code == 201, answer.text
        assert answer.headers["x-request-id"] == request_id
        (offloaded if answer.json()["route"] == "edge" else others).append(request_id)
    assert offloaded, "no task was served at the edge"

    generated = {
        str(line["request_id"]): line
        for line in node_lines(node)
        if line.get("event") == "generate" and "request_id" in line
    }
    print(f"offloaded {offloaded}; elsewhere {others}; node lines {len(generated)}")
    for request_id in offloaded:
        line = generated[request_id]  # the node logged this request under the same id
        assert line["node"] == "edge-ids-0" and line["status"] == "ok"
    # Every other id the node logged is its own (`req-...`): a call made outside any request
    # (the stack's warm-up); none is an id changed on the way.
    sent = set(offloaded) | set(others)
    assert all(i in sent or i.startswith("req-") for i in generated), sorted(generated)
