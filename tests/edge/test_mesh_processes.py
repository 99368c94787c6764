"""Three node processes on loopback; one is killed under load and restarted.

Checks the mesh's promises end to end over real MCP (streamable HTTP): zero failed requests
while a node dies mid-load, and a rejoining node is sent exactly the artifacts it missed.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trifecta.core.tasks import generate_tasks
from trifecta.edge.mesh import EdgeMesh
from trifecta.edge.processes import NodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    processes = [
        NodeProcess(f"node-{i}", tmp_path / f"node-{i}", capacity=2).start() for i in range(3)
    ]
    try:
        for process in processes:
            process.wait_ready(timeout_s=120)
        yield processes
    finally:
        for process in processes:
            process.stop()


def test_killed_node_under_load_fails_no_request_and_resyncs(
    nodes: list[NodeProcess], tmp_path: Path, small_artifact_path: Path
) -> None:
    with EdgeMesh(tmp_path / "mesh", heartbeat_s=0.2, request_timeout_s=120) as mesh:
        for process in nodes:
            mesh.add_node(process.url)
        model = mesh.publish_file("model", small_artifact_path, "edge-model")
        program = mesh.publish(
            "tensorlogic", "ancestry", b"ancestor(X,Z) :- parent(X,Y), ancestor(Y,Z)."
        )
        assert mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=120)
        victim = next(s for s in mesh.node_states() if s.key == nodes[1].url)
        assert victim.bytes_synced == model.size + program.size

        prompts = [
            t.prompt for t in generate_tasks(48, seed=5, split="heldout", difficulties=[1, 2])
        ]
        with ThreadPoolExecutor(max_workers=4) as pool:  # = the capacity left after the kill
            futures = [pool.submit(mesh.offload, None, [p] * 4, max_new_tokens=6) for p in prompts]
            # kill the node once it has answered some of the load and is busy with more
            assert mesh.wait_until(
                lambda m: victim.status is not None and victim.status.served > 0, timeout_s=120
            )
            nodes[1].kill()
            results = [f.result() for f in futures]
        assert [
            (r.reason, r.detail) for r in results if not r.offloaded
        ] == []  # zero failed requests
        assert {r.node for r in results} >= {"node-0", "node-2"}
        assert mesh.wait_until(lambda m: not victim.healthy, timeout_s=30)

        # while it is down, something new is published; it rejoins with its old store
        playbook = mesh.publish("playbook", "factory", b"- read the sensor map first\n")
        sent_before = victim.bytes_synced
        joins_before = victim.joins
        nodes[1].start().wait_ready(timeout_s=120)
        assert mesh.wait_until(lambda m: victim.healthy and m.in_sync(victim), timeout_s=120)
        assert victim.joins == joins_before + 1
        assert victim.bytes_synced - sent_before == playbook.size  # only what it lacked
        assert victim.status is not None and victim.status.model_sha256 == model.sha256
        after = mesh.offload(None, ["12+34?"], max_new_tokens=4)
        assert after.offloaded
