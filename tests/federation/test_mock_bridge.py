from __future__ import annotations

import pytest

from trifecta.core.errors import InvalidInput, SovereigntyViolation, Unavailable
from trifecta.federation.bridge import COGNITIVE
from trifecta.federation.mock import Fault, MockBridge
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import load_topology


class Echo:
    name = "echo"

    def __init__(self) -> None:
        self.calls = 0

    def say(self, text: str) -> str:
        self.calls += 1
        return text.upper()


def _bridge() -> tuple[MockBridge, Echo]:
    bridge = MockBridge(load_topology(), seed=1)
    echo = Echo()
    for env in ("inference", "sovereign", "edge-eu"):
        bridge.host(env, COGNITIVE, echo)
    return bridge, echo


TWIN = Capsule(id="twin", name="Twin", kind="digital_twin", domain="energy")
GOV = Capsule(id="gov", name="Gov", kind="sovereign", domain="gov-eu", jurisdiction="eu")


def test_calls_run_in_process_and_are_traced() -> None:
    bridge, echo = _bridge()
    client = bridge.client(TWIN, "inference", COGNITIVE)
    assert client.say("hi") == "HI" and client.name == "echo" and echo.calls == 1
    assert [(h.environment, h.method, h.ok) for h in bridge.hops] == [("inference", "say", True)]


def test_sovereign_capsule_never_gets_a_client_outside_its_jurisdiction() -> None:
    bridge, echo = _bridge()
    with pytest.raises(SovereigntyViolation):
        bridge.client(GOV, "inference", COGNITIVE)
    assert bridge.client(GOV, "sovereign", COGNITIVE).say("a") == "A"
    assert bridge.client(GOV, "edge-eu", COGNITIVE).say("b") == "B"
    assert {h.environment for h in bridge.hops_of(["gov"])} <= {"sovereign", "edge-eu"}
    assert echo.calls == 2


def test_injected_faults_make_calls_unavailable_without_running_the_service() -> None:
    bridge, echo = _bridge()
    bridge.set_fault("inference", down=True)
    client = bridge.client(TWIN, "inference", COGNITIVE)
    with pytest.raises(Unavailable, match="down"):
        client.say("x")
    assert echo.calls == 0 and bridge.hops[-1].ok is False
    bridge.set_fault("inference", Fault(failure_rate=1.0))
    with pytest.raises(Unavailable, match="injected"):
        client.say("x")
    bridge.set_fault("inference", Fault())
    assert client.say("x") == "X"


def test_failure_rate_is_seeded_and_roughly_honoured() -> None:
    bridge, _ = _bridge()
    bridge.set_fault("inference", failure_rate=0.3)
    client = bridge.client(TWIN, "inference", COGNITIVE)
    failures = 0
    for _ in range(400):
        try:
            client.say("x")
        except Unavailable:
            failures += 1
    assert 80 < failures < 160


def test_unknown_environment_or_service_is_named() -> None:
    bridge, _ = _bridge()
    with pytest.raises(InvalidInput) as err:
        bridge.client(TWIN, "edge", COGNITIVE)
    assert err.value.field == "service"
    with pytest.raises(Exception, match="nowhere"):
        bridge.client(TWIN, "nowhere", COGNITIVE)
