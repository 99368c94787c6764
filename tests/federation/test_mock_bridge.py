"""The mock bridge's fault injection around a bridge of typed clients, and the one placement
rule applied before a client is handed out and again by the receiving environment."""

from __future__ import annotations

import pytest

from trifecta.core.errors import InvalidInput, NotFound, SovereigntyViolation, Unavailable
from trifecta.federation.bridge import InProcessBridge
from trifecta.federation.mock import Fault, MockBridge
from trifecta.federation.receiver import EnvironmentHost, EnvironmentServices
from trifecta.federation.services import OffloadRequest
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import load_topology

TWIN = Capsule(id="twin", name="Twin", kind="digital_twin", domain="energy")
GOV = Capsule(id="gov", name="Gov", kind="sovereign", domain="gov-eu", jurisdiction="eu")
CAPSULES = {c.id: c for c in (TWIN, GOV)}


class CountingMesh:
    """Stands in for an edge mesh: counts offloads and never offloads (the loop falls back)."""

    def __init__(self) -> None:
        self.calls = 0

    def offload(self, capsule: Capsule, prompts: list[str], **_: object) -> object:
        from trifecta.edge.offload import OffloadResult

        self.calls += 1
        return OffloadResult(False, "no_healthy_node", f"{capsule.id}: {len(prompts)} prompts")

    def healthy_count(self) -> int:
        return 0


def _bridge() -> tuple[MockBridge, CountingMesh, InProcessBridge]:
    topology = load_topology()
    mesh = CountingMesh()
    hosts = {
        name: EnvironmentHost(
            topology.environment(name),
            EnvironmentServices(edge=mesh),  # type: ignore[arg-type]
            CAPSULES.__getitem__,
        )
        for name in ("edge", "edge-eu", "sovereign")
    }
    inner = InProcessBridge(topology, hosts)
    return MockBridge(inner, seed=1), mesh, inner


def _offload(bridge: MockBridge, capsule: Capsule, env: str) -> str:
    request = OffloadRequest(capsule_id=capsule.id, prompts=["a=1;a?"])
    return bridge.edge(capsule, env).offload(request).reason


def test_calls_reach_the_receiver_and_are_traced_on_both_sides() -> None:
    bridge, mesh, inner = _bridge()
    assert _offload(bridge, TWIN, "edge") == "no_healthy_node" and mesh.calls == 1
    assert [(h.environment, h.method, h.ok) for h in bridge.hops] == [("edge", "offload", True)]
    served = inner.served("edge")
    assert [(r.capsule_id, r.method, r.ok) for r in served] == [("twin", "offload", True)]


def test_the_sender_refuses_a_place_the_capsule_may_not_reach() -> None:
    bridge, mesh, inner = _bridge()
    with pytest.raises(SovereigntyViolation):
        bridge.edge(GOV, "edge")  # global mesh: outside the EU jurisdiction
    with pytest.raises(SovereigntyViolation, match="reserved for sovereign"):
        bridge.edge(TWIN, "sovereign")
    _offload(bridge, GOV, "edge-eu")
    assert mesh.calls == 1 and inner.served("sovereign") == [] and inner.served("edge") == []


def test_the_receiver_refuses_on_its_own_even_when_reached_directly() -> None:
    _, mesh, inner = _bridge()
    host = inner.hosts["sovereign"]
    with pytest.raises(SovereigntyViolation):
        host.edge_client().offload(OffloadRequest(capsule_id="twin", prompts=["1+1?"]))
    assert mesh.calls == 0
    (record,) = host.log.records()
    assert record.capsule_id == "twin" and not record.ok and "reserved" in record.detail


def test_injected_faults_make_calls_unavailable_without_running_the_service() -> None:
    bridge, mesh, _ = _bridge()
    bridge.set_fault("edge", down=True)
    with pytest.raises(Unavailable, match="down"):
        _offload(bridge, TWIN, "edge")
    assert mesh.calls == 0 and bridge.hops[-1].ok is False and not bridge.is_up("edge")
    bridge.set_fault("edge", Fault(failure_rate=1.0))
    with pytest.raises(Unavailable, match="injected"):
        _offload(bridge, TWIN, "edge")
    bridge.set_fault("edge", Fault())
    assert _offload(bridge, TWIN, "edge") and mesh.calls == 1
    assert bridge.faults() == {}


def test_failure_rate_is_seeded_and_roughly_honoured() -> None:
    bridge, _, _ = _bridge()
    bridge.set_fault("edge", failure_rate=0.3)
    failures = 0
    for _ in range(400):
        try:
            _offload(bridge, TWIN, "edge")
        except Unavailable:
            failures += 1
    assert 80 < failures < 160


def test_unknown_environment_or_service_is_named() -> None:
    bridge, _, _ = _bridge()
    with pytest.raises(InvalidInput) as err:
        bridge.cognitive(TWIN, "edge")
    assert err.value.field == "service"
    with pytest.raises(NotFound, match="nowhere"):
        bridge.edge(TWIN, "nowhere")
    with pytest.raises(InvalidInput):
        bridge.set_fault("edge", latency_ms=-1)


def test_the_hop_trace_is_bounded() -> None:
    bridge, _, _ = _bridge()
    assert bridge.hops.maxlen is not None and bridge.hops.maxlen <= 100_000
