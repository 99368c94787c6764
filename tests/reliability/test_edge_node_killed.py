"""The whole loop with its edge site on a node process of its own, killed (SIGKILL) while light
tasks flow: zero failed requests. Tasks the edge answered before the kill were served there;
afterwards each one records the failed edge hop and is answered in the cloud.

Extends `tests/edge/test_mesh_processes.py` (a node killed inside a mesh of three, where the
other nodes take its work) to the case the loop must absorb: the site's last node gone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trifecta.core import db
from trifecta.core.settings import Settings
from trifecta.core.tasks import generate_tasks
from trifecta.edge.processes import NodeProcess
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import TaskRequest, TaskResult
from trifecta.orchestrator.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CAPSULE = "dt-energy-0000"


@pytest.fixture
def stack_on_a_node_process(tmp_path: Path) -> Iterator[tuple[Stack, NodeProcess]]:
    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'c.db'}")
    stack = Stack(settings=settings)
    node = NodeProcess("edge-proc-0", tmp_path / "node", environment="edge", kind="edge")
    node.start().wait_ready(timeout_s=180)
    try:
        for name, mesh in stack.meshes.items():  # every edge site loses its in-process node
            for state in mesh.node_states():
                mesh.remove_node(state.key)
            if name == "edge":  # ... and "edge" serves from the process alone
                mesh.add_node(node.url)
                assert mesh.wait_until(
                    lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=120
                )
        stack.warm_up()
        yield stack, node
    finally:
        node.stop()
        stack.close()
        db.dispose_engines()


def test_the_edge_sites_last_node_killed_fails_no_request(
    stack_on_a_node_process: tuple[Stack, NodeProcess],
) -> None:
    stack, node = stack_on_a_node_process
    loop = Orchestrator(stack.parts, learn=False)
    prompts = [t.prompt for t in generate_tasks(60, seed=11, split="heldout", difficulties=[1])]
    edge_served = threading.Event()

    def serve(prompt: str) -> TaskResult:
        result = loop.serve(CAPSULE, TaskRequest(prompt=prompt))
        if result.route == "edge":
            edge_served.set()
        return result

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(serve, p) for p in prompts]
        assert edge_served.wait(timeout=180), "the edge node served nothing"
        node.kill()
        results = [f.result() for f in futures]  # any exception here is a failed request

    routes = [r.route for r in results]
    print(f"edge node killed mid-run: routes {dict((r, routes.count(r)) for r in set(routes))}")
    assert all(r.answer is not None for r in results)
    assert "edge" in routes and routes[-1] != "edge"
    after = results[-1]
    assert any(h.layer == "edge" and not h.ok for h in after.hops)  # tried, failed, fell back
