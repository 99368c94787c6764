"""The mesh with in-process nodes: sync by content hash, offload, sovereignty, fallback."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest
from mcp import Client

from trifecta.core.errors import Unavailable
from trifecta.core.protocols import Generation, LanguageModel
from trifecta.edge.artifact import FORMAT_VERSION, CorruptArtifact, EdgeArtifact
from trifecta.edge.mesh import EdgeMesh
from trifecta.edge.mesh_model import EdgeMeshModel
from trifecta.edge.node import EdgeNode, GenerateResponse, NodeConfig, NodePlace
from trifecta.edge.offload import OffloadResult
from trifecta.edge.store import sha256_hex
from trifecta.fleet.capsules import Capsule

from .helpers import rewrite_metadata

TWIN = Capsule(id="plant-7", name="Plant 7", kind="digital_twin", domain="factory")
SOVEREIGN_US = Capsule(id="gov-us", name="Gov", kind="sovereign", domain="gov", jurisdiction="us")


def _node(tmp_path: Path, name: str, jurisdiction: str | None = "eu") -> EdgeNode:
    place = NodePlace(
        name=f"edge-{jurisdiction or 'global'}", kind="edge", jurisdiction=jurisdiction
    )
    return EdgeNode(NodeConfig(name=name, environment=place, data_dir=tmp_path / name))


@pytest.fixture
def mesh(tmp_path: Path, small_artifact_path: Path) -> Iterator[EdgeMesh]:
    with EdgeMesh(tmp_path / "mesh", heartbeat_s=0.1) as mesh:
        mesh.add_node(_node(tmp_path, "eu-1"))
        mesh.add_node(_node(tmp_path, "eu-2"))
        mesh.publish_file("model", small_artifact_path, "edge-model")
        mesh.publish("playbook", "factory", b"- check the sensor map before answering\n")
        assert mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=60)
        yield mesh


class CloudTier:
    """A stand-in for the cloud tier the orchestrator would pass: it answers by solving."""

    name = "cloud"

    def __init__(self) -> None:
        self.calls = 0

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        stop: Sequence[str] = (),
    ) -> list[Generation]:
        from trifecta.core.tasks import solve

        self.calls += 1
        return [Generation(solve(p), [solve(p)], [0.0], [0.0], "stop", self.name) for p in prompts]


def test_nodes_receive_every_artifact_once(mesh: EdgeMesh) -> None:
    for state in mesh.node_states():
        assert state.status is not None and state.status.model_sha256 == mesh.current_model().sha256  # type: ignore[union-attr]
        assert {r.sha256 for r in state.synced} == {r.sha256 for r in mesh.store.inventory()}
        assert state.bytes_synced == sum(r.size for r in mesh.store.inventory())
    # publishing something new sends only that
    before = {s.key: s.bytes_synced for s in mesh.node_states()}
    ref = mesh.publish("tensorlogic", "ancestry", b"ancestor(X,Z) :- parent(X,Y), ancestor(Y,Z).")
    assert mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=30)
    assert all(s.bytes_synced - before[s.key] == ref.size for s in mesh.node_states())


def test_light_requests_are_served_at_the_edge(mesh: EdgeMesh) -> None:
    result = mesh.offload(TWIN, ["41+17?", "t=4,p=17,r=63;p?"], max_new_tokens=4)
    assert result.offloaded and result.node in {"eu-1", "eu-2"}
    assert result.generations is not None and len(result.generations) == 2
    assert all(g.model.startswith("edge:") for g in result.generations)


def test_a_request_that_finds_every_node_busy_waits_and_is_served(mesh: EdgeMesh) -> None:
    """Every node at capacity (as while a killed node's load moves to the others): the
    request waits between passes and is served once one frees, instead of failing."""
    nodes = list(mesh._local)  # the in-process nodes: their own capacity gate answers busy
    for node in nodes:
        node._in_flight = node.config.capacity

    def free_one() -> None:
        time.sleep(0.03)  # within the first of the mesh's waits (20, 40, 80 ms)
        with nodes[0]._lock:
            nodes[0]._in_flight = 0

    freer = threading.Thread(target=free_one)
    freer.start()
    try:
        result = mesh.offload(TWIN, ["41+17?"], max_new_tokens=4)
    finally:
        freer.join()
        for node in nodes:
            node._in_flight = 0
    assert result.offloaded and result.node == nodes[0].name, result.detail
    assert any("busy" in attempt for attempt in result.attempts)


def test_policy_refusals_fall_back_to_the_cloud(mesh: EdgeMesh) -> None:
    cloud = CloudTier()
    model = EdgeMeshModel(mesh, fallback=cloud, capsule=SOVEREIGN_US)
    assert isinstance(model, LanguageModel)
    [g] = model.generate(["41+17?"])  # a US sovereign capsule may not use EU nodes
    assert g.model == "cloud" and g.text == "58"
    assert model.last_result is not None and model.last_result.reason == "no_allowed_node"
    heavy = EdgeMeshModel(mesh, fallback=cloud, capsule=TWIN)
    heavy.generate(["t=41,p=17,r=63;t+r?"])
    assert heavy.last_result is not None and heavy.last_result.reason == "not_light"
    assert cloud.calls == 2
    with pytest.raises(Unavailable, match="no fallback"):
        EdgeMeshModel(mesh, fallback=None, capsule=SOVEREIGN_US).generate(["1+2?"])


def test_a_node_that_never_answers_is_never_chosen(mesh: EdgeMesh) -> None:
    from trifecta.edge.processes import free_port

    dead = mesh.add_node(f"http://127.0.0.1:{free_port()}/mcp")
    results = [mesh.offload(TWIN, ["12+30?"], max_new_tokens=3) for _ in range(4)]
    assert all(r.offloaded and r.node != dead for r in results)
    assert not next(s for s in mesh.node_states() if s.key == dead).healthy


def test_node_refuses_a_corrupt_model_and_keeps_serving(
    tmp_path: Path, small_artifact_path: Path
) -> None:
    node = _node(tmp_path, "solo")
    good = small_artifact_path.read_bytes()
    assert node.put_artifact("model", "edge-model", sha256_hex(good), good).status == "stored"
    bad = bytearray(good)
    bad[-10] ^= 0xFF
    answer = node.put_artifact("model", "edge-model", sha256_hex(bytes(bad)), bytes(bad))
    assert answer.status == "rejected" and "payload_sha256" in answer.message
    wrong_hash = node.put_artifact("playbook", "p", "0" * 64, b"data")
    assert wrong_hash.status == "rejected" and "hash mismatch" in wrong_hash.message
    assert node.model_sha256 == sha256_hex(good) and len(node.store.inventory()) == 1

    async def over_mcp() -> None:
        async with Client(node.mcp_server()) as client:
            answer = await client.call_tool(
                "put_artifact",
                {
                    "kind": "model",
                    "name": "x",
                    "sha256": sha256_hex(bytes(bad)),
                    "data_base64": base64.b64encode(bytes(bad)).decode(),
                },
            )
            assert answer.structured_content["status"] == "rejected"
            invalid = await client.call_tool("generate", {"prompts": []})
            assert invalid.is_error  # schema: at least one prompt
            status = await client.call_tool("status", {})
            assert status.structured_content["model_sha256"] == sha256_hex(good)

    anyio.run(over_mcp)


def test_a_new_model_rolls_out_and_its_accuracy_gates_the_grades(
    mesh: EdgeMesh, small_artifact: EdgeArtifact, tmp_path: Path
) -> None:
    version = small_artifact.with_accuracy({1: 0.2, 2: 0.99}).save(tmp_path / "v2.safetensors")
    ref = mesh.publish_file("model", version, "edge-model")
    # until every node runs v2, a node still on v1 is not current and is not chosen
    assert mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=60)
    assert all(
        s.status is not None and s.status.model_sha256 == ref.sha256 for s in mesh.node_states()
    )
    assert mesh.offload(TWIN, ["41+17?"], max_new_tokens=4).offloaded
    lookup = mesh.offload(TWIN, ["t=4,p=17,r=63;p?"], max_new_tokens=4)
    assert not lookup.offloaded and lookup.reason == "below_quality"


def test_a_corrupt_model_is_refused_before_it_reaches_the_mesh(
    tmp_path: Path, small_artifact_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    data = bytearray(small_artifact_path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last tensor
    corrupt.write_bytes(bytes(data))
    with EdgeMesh(tmp_path / "mesh") as mesh:
        with pytest.raises(CorruptArtifact, match="payload_sha256"):
            mesh.publish_file("model", corrupt, "edge-model")
        assert mesh.current_model() is None
        assert mesh.store.inventory() == []


def test_a_node_with_an_unreadable_stored_model_starts_and_is_brought_up_to_date(
    tmp_path: Path, small_artifact_path: Path
) -> None:
    """A node whose store holds a model it cannot read (here one of another format version,
    as after an upgrade) starts without a model, and the mesh sends it the current one."""
    old = tmp_path / "old.safetensors"
    rewrite_metadata(small_artifact_path, old, format_version=str(FORMAT_VERSION - 1))
    old_bytes = old.read_bytes()
    store = _node(tmp_path, "eu-1").store
    store.put("model", "edge-model", old_bytes, sha256=sha256_hex(old_bytes))
    node = _node(tmp_path, "eu-1")  # restarted on that store
    assert node.runtime is None and node.model_sha256 is None
    with EdgeMesh(tmp_path / "mesh", heartbeat_s=0.1) as mesh:
        mesh.add_node(node)
        mesh.publish_file("model", small_artifact_path, "edge-model")
        assert mesh.wait_until(lambda m: all(m.in_sync(s) for s in m.node_states()), timeout_s=60)
    assert node.model_sha256 == sha256_hex(small_artifact_path.read_bytes())


def test_an_in_process_node_serves_on_the_caller_s_thread_with_the_tool_s_checks(
    mesh: EdgeMesh,
) -> None:
    """The mesh calls an in-process node directly (no MCP session, no thread hand-off), and
    the answer is the one the node's `generate` tool gives for the same call."""
    threads: list[threading.Thread] = []
    for node in mesh._local:
        runtime = node.runtime
        assert runtime is not None
        original = runtime.generate

        def recording(*args: object, _original=original, **kwargs: object):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread())
            return _original(*args, **kwargs)

        runtime.generate = recording  # type: ignore[method-assign]
    result = mesh.offload(TWIN, ["41+17?"], max_new_tokens=4)
    assert result.offloaded and threads == [threading.current_thread()]
    assert result.generations is not None
    node = next(n for n in mesh._local if n.name == result.node)

    async def over_mcp() -> GenerateResponse:
        async with Client(node.mcp_server()) as client:
            answer = await client.call_tool(
                "generate", {"prompts": ["41+17?"], "max_new_tokens": 4}
            )
            return GenerateResponse.model_validate(answer.structured_content)

    [tool_generation] = anyio.run(over_mcp).generations
    assert tool_generation.text == result.generations[0].text
    assert tool_generation.tokens == result.generations[0].tokens


def test_options_the_generate_tool_refuses_are_refused_before_any_node(mesh: EdgeMesh) -> None:
    served = [n._served for n in mesh._local]
    too_long = mesh.offload(TWIN, ["41+17?"], max_new_tokens=65)
    assert not too_long.offloaded and too_long.reason == "invalid_request"
    assert too_long.detail.startswith("max_new_tokens:"), too_long.detail
    unknown = mesh.offload(TWIN, ["41+17?"], beam_width=2)
    assert unknown.reason == "invalid_request" and unknown.detail.startswith("beam_width:")
    # no node was asked, none is marked down for the caller's mistake
    assert [n._served for n in mesh._local] == served
    assert all(s.healthy for s in mesh.node_states())


def test_a_node_that_breaks_mid_request_is_skipped_and_rejoins(
    mesh: EdgeMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = mesh._local[0]

    def crash(request: object) -> object:
        raise RuntimeError("kernel fault")

    monkeypatch.setattr(broken, "serve_generate", crash)
    results = [mesh.offload(TWIN, ["12+30?"], max_new_tokens=3) for _ in range(3)]
    assert all(r.offloaded and r.node != broken.name for r in results)
    assert any(
        f"{broken.name}: generate failed (RuntimeError)" in a for r in results for a in r.attempts
    )
    state = next(s for s in mesh.node_states() if s.key == broken.name)
    monkeypatch.undo()
    # its heartbeat still answers, so it is back at the next beat
    assert mesh.wait_until(lambda m: state.healthy, timeout_s=10)
    assert mesh.offload(TWIN, ["12+30?"], max_new_tokens=3).offloaded


def test_concurrent_callers_share_the_nodes_within_their_capacity(mesh: EdgeMesh) -> None:
    """Callers on many threads: no node ever holds more than its capacity, a request that
    finds none free is refused as such (the caller then goes to the cloud), and every
    count returns to zero."""
    from concurrent.futures import ThreadPoolExecutor

    peak: dict[str, int] = {}
    for node in mesh._local:
        node.config.capacity = 2
        runtime = node.runtime
        assert runtime is not None
        runtime.generate(["1+1?"], max_new_tokens=2)  # compiled before the callers race
        original = runtime.generate

        def counting(*args: object, _node=node, _original=original, **kwargs: object):  # type: ignore[no-untyped-def]
            peak[_node.name] = max(peak.get(_node.name, 0), _node._in_flight)
            time.sleep(0.002)  # hold the slot, so callers overlap
            return _original(*args, **kwargs)

        runtime.generate = counting  # type: ignore[method-assign]

    def ask(i: int) -> OffloadResult:
        return mesh.offload(TWIN, [f"{i}+1?"], max_new_tokens=3)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(ask, range(64)))
    refused = [r for r in results if not r.offloaded]
    assert all(
        r.reason == "no_capacity" or all(" busy " in a for a in r.attempts) for r in refused
    ), [r.detail for r in refused]
    assert {r.node for r in results if r.offloaded} == {n.name for n in mesh._local}
    assert max(peak.values()) <= 2
    assert all(s.in_flight == 0 for s in mesh.node_states())
    assert all(n._in_flight == 0 for n in mesh._local)
