"""The mesh's bounded wait for a slot (edge/mesh.py, `[edge] slot_wait_ms`): a request that finds
every node it may use at capacity waits for a slot instead of going to the cloud at once, is
handed the first one freed on a node it may use (oldest waiter first), gives up after its
deadline, is refused at once when the queue is full, and never waits for (or is served by) a
node its capsule does not allow."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import ValidationError

from trifecta.core.errors import InvalidInput
from trifecta.edge.mesh import EdgeMesh
from trifecta.edge.node import EdgeNode, NodeConfig, NodePlace
from trifecta.edge.offload import OffloadResult
from trifecta.edge.settings import EdgeSettings
from trifecta.fleet.capsules import Capsule

TWIN = Capsule(id="plant-7", name="Plant 7", kind="digital_twin", domain="factory")
SOVEREIGN_EU = Capsule(id="gov-eu", name="Gov", kind="sovereign", domain="gov", jurisdiction="eu")
LONG = 5.0  # a wait no test reaches: a request that waits this long has failed the test


class Gate:
    """Holds every request on a node inside its model until `open`."""

    def __init__(self, node: EdgeNode) -> None:
        runtime = node.runtime
        assert runtime is not None
        runtime.generate(["1+1?"], max_new_tokens=2)  # compiled before the test's timing
        self.inside = threading.Semaphore(0)
        self.entries: list[str] = []  # the first prompt of each request, as it reached the model
        self._open = threading.Event()
        original = runtime.generate

        def held(prompts: list[str], **kwargs: object):  # type: ignore[no-untyped-def]
            self.entries.append(prompts[0])
            self.inside.release()
            assert self._open.wait(LONG)
            return original(prompts, **kwargs)  # type: ignore[arg-type]

        runtime.generate = held  # type: ignore[method-assign,assignment]

    def open(self) -> None:
        self._open.set()

    def entered(self, count: int = 1) -> None:
        for _ in range(count):
            assert self.inside.acquire(timeout=LONG)


def _node(tmp_path: Path, name: str, jurisdiction: str, capacity: int = 1) -> EdgeNode:
    place = NodePlace(name=f"edge-{jurisdiction}", kind="edge", jurisdiction=jurisdiction)
    return EdgeNode(
        NodeConfig(name=name, environment=place, data_dir=tmp_path / name, capacity=capacity)
    )


@pytest.fixture
def nodes(tmp_path: Path, small_artifact_path: Path) -> Iterator[tuple[EdgeMesh, EdgeNode]]:
    """A mesh with one EU node of capacity 1, waits of LONG seconds, one waiter a slot."""
    with EdgeMesh(tmp_path / "mesh", heartbeat_s=0.1, slot_wait_s=LONG, slot_queue=1) as mesh:
        node = _node(tmp_path, "eu-1", "eu")
        mesh.add_node(node)
        mesh.publish_file("model", small_artifact_path, "edge-model")
        assert mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=60)
        yield mesh, node


def _waiters(mesh: EdgeMesh, count: int) -> None:
    assert mesh.wait_until(lambda m: len(m._waiters) == count, timeout_s=LONG, poll_s=0.001)


def _ask(mesh: EdgeMesh, capsule: Capsule, prompt: str = "41+17?") -> OffloadResult:
    return mesh.offload(capsule, [prompt], max_new_tokens=3)


def test_a_request_finding_the_node_full_waits_and_is_served(
    nodes: tuple[EdgeMesh, EdgeNode],
) -> None:
    mesh, node = nodes
    gate = Gate(node)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(_ask, mesh, TWIN)
        gate.entered()  # the node's one slot is taken
        second = pool.submit(_ask, mesh, TWIN)
        _waiters(mesh, 1)
        assert not second.done()
        gate.open()
        results = [first.result(LONG), second.result(LONG)]
    assert all(r.offloaded and r.node == "eu-1" for r in results), [r.detail for r in results]
    assert [s.in_flight for s in mesh.node_states()] == [0] and not mesh._waiters


def _while_full(mesh: EdgeMesh, node: EdgeNode) -> tuple[OffloadResult, float]:
    """A request made while another holds the node's one slot, and how long it took."""
    gate = Gate(node)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(_ask, mesh, TWIN)
        gate.entered()
        started = time.monotonic()
        result = _ask(mesh, TWIN)
        took = time.monotonic() - started
        gate.open()
        assert first.result(LONG).offloaded
    assert not mesh._waiters and [s.in_flight for s in mesh.node_states()] == [0]
    return result, took


def test_without_a_wait_a_full_node_refuses_at_once(nodes: tuple[EdgeMesh, EdgeNode]) -> None:
    mesh, node = nodes
    mesh.slot_wait_s = 0.0
    refused, took = _while_full(mesh, node)
    assert refused.reason == "no_capacity" and not refused.offloaded, refused.detail
    assert took < 0.5


def test_a_wait_past_its_deadline_falls_back_and_leaves_no_waiter(
    nodes: tuple[EdgeMesh, EdgeNode],
) -> None:
    mesh, node = nodes
    mesh.slot_wait_s = 0.05
    late, took = _while_full(mesh, node)
    assert late.reason == "no_capacity" and "none freed within 50 ms" in late.detail, late.detail
    assert took >= 0.05


def test_a_full_queue_refuses_at_once(nodes: tuple[EdgeMesh, EdgeNode]) -> None:
    """One slot and `slot_queue=1`: one request may wait; the next is refused without
    waiting, so a saturated node still answers fast."""
    mesh, node = nodes
    gate = Gate(node)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(_ask, mesh, TWIN)
        gate.entered()
        waiting = pool.submit(_ask, mesh, TWIN)
        _waiters(mesh, 1)
        started = time.monotonic()
        refused = _ask(mesh, TWIN)
        took = time.monotonic() - started
        gate.open()
        assert first.result(LONG).offloaded and waiting.result(LONG).offloaded
    assert refused.reason == "no_capacity" and "1 requests already wait" in refused.detail
    assert took < 0.5, took


def test_slots_go_to_the_oldest_waiter_first(nodes: tuple[EdgeMesh, EdgeNode]) -> None:
    mesh, node = nodes
    mesh.slot_queue = 3
    gate = Gate(node)
    gate.entries.clear()
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures: list[Future[OffloadResult]] = [pool.submit(_ask, mesh, TWIN, "1+1?")]
        gate.entered()
        for i, prompt in enumerate(["2+2?", "3+3?", "4+4?"]):
            futures.append(pool.submit(_ask, mesh, TWIN, prompt))
            _waiters(mesh, i + 1)
        gate.open()
        assert all(f.result(LONG).offloaded for f in futures)
    assert gate.entries == ["1+1?", "2+2?", "3+3?", "4+4?"]


def test_the_wait_never_loosens_the_allowed_place(
    nodes: tuple[EdgeMesh, EdgeNode], tmp_path: Path
) -> None:
    """An EU-sovereign request waits for the EU node only: a US node's freed slot is not
    handed to it (nor is it served there), and it is served once the EU node frees."""
    mesh, eu = nodes
    us = _node(tmp_path, "us-1", "us")
    mesh.add_node(us)
    assert mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=60)
    eu_gate, us_gate = Gate(eu), Gate(us)
    with ThreadPoolExecutor(max_workers=3) as pool:
        holder = pool.submit(_ask, mesh, SOVEREIGN_EU)
        eu_gate.entered()
        sovereign = pool.submit(_ask, mesh, SOVEREIGN_EU)
        _waiters(mesh, 1)
        anywhere = pool.submit(_ask, mesh, TWIN)  # the free US node takes it
        us_gate.entered()
        us_gate.open()
        assert anywhere.result(LONG).node == "us-1"
        time.sleep(0.05)  # the US slot was freed: the sovereign request must still wait
        assert not sovereign.done() and len(mesh._waiters) == 1
        eu_gate.open()
        assert holder.result(LONG).node == "eu-1"
        result = sovereign.result(LONG)
    assert result.offloaded and result.node == "eu-1", result.detail
    assert all(s.in_flight == 0 for s in mesh.node_states()) and not mesh._waiters


def test_the_wait_and_queue_come_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIFECTA_EDGE_SLOT_WAIT_MS", "7.5")
    monkeypatch.setenv("TRIFECTA_EDGE_SLOT_QUEUE", "3")
    mesh = EdgeMesh(tmp_path / "mesh")
    assert mesh.slot_wait_s == pytest.approx(0.0075) and mesh.slot_queue == 3
    monkeypatch.setenv("TRIFECTA_EDGE_SLOT_WAIT_MS", "-1")
    with pytest.raises(ValidationError, match="slot_wait_ms"):
        EdgeSettings()
    with pytest.raises(InvalidInput) as error:
        EdgeMesh(tmp_path / "mesh", slot_wait_s=float("nan"), slot_queue=1)
    assert error.value.field == "slot_wait_s"
