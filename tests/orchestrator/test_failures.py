"""Failure injection in the mock bridge: an environment down reroutes requests within the
capsule's allowed set, or refuses them with a clear error; never sends them elsewhere."""

from __future__ import annotations

import pytest

from trifecta.core.errors import Unavailable
from trifecta.core.tasks import generate_tasks
from trifecta.federation.mock import Fault
from trifecta.fleet.capsules import Capsule
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import TaskRequest
from trifecta.orchestrator.stack import Stack


def _add(stack: Stack, capsule: Capsule) -> Capsule:
    return stack.add_capsule(capsule)


def _heavy(domain: str, n: int = 2) -> list[str]:
    return [
        t.prompt
        for t in generate_tasks(n, seed=2, split="heldout", difficulties=[4], domain=domain)
    ]


def test_cloud_environment_down_reroutes_inside_the_allowed_set(stack: Stack) -> None:
    twin = _add(
        stack,
        Capsule(
            id="f-twin",
            name="t",
            kind="digital_twin",
            domain="f-twin",
            allowed_environments=["inference", "local"],
        ),
    )
    orchestrator = Orchestrator(stack.parts)
    stack.bridge.set_fault("inference", Fault(down=True))
    try:
        for prompt in _heavy(twin.domain):
            result = orchestrator.serve(twin.id, TaskRequest(prompt=prompt))
            assert result.environment == "local"
            failed = [h for h in result.hops if not h.ok and h.layer == "cognitive"]
            assert all(h.environment == "inference" for h in failed)
    finally:
        stack.bridge.set_fault("inference", Fault())


def test_sovereign_capsule_is_refused_not_rerouted_when_its_site_is_down(stack: Stack) -> None:
    gov = _add(
        stack, Capsule(id="f-gov", name="g", kind="sovereign", domain="f-gov", jurisdiction="eu")
    )
    orchestrator = Orchestrator(stack.parts)
    prompt = _heavy(gov.domain, 1)[0]
    assert orchestrator.serve(gov.id, TaskRequest(prompt=prompt)).environment == "sovereign"
    stack.bridge.set_fault("sovereign", Fault(down=True))
    try:
        with pytest.raises(Unavailable) as err:
            orchestrator.serve(gov.id, TaskRequest(prompt=_heavy(gov.domain, 2)[1]))
        assert "f-gov" in err.value.message and "sovereign" in err.value.message
    finally:
        stack.bridge.set_fault("sovereign", Fault())
    reached = {h.environment for h in stack.bridge.hops_of([gov.id])}
    assert reached <= {"sovereign", "edge-eu"}


def test_edge_environment_down_falls_back_to_the_cloud_without_error(stack: Stack) -> None:
    twin = _add(stack, Capsule(id="f-edge", name="e", kind="digital_twin", domain="f-edge"))
    orchestrator = Orchestrator(stack.parts)
    light = generate_tasks(2, seed=5, split="heldout", difficulties=[1], domain=twin.domain)
    for name in stack.meshes:
        stack.bridge.set_fault(name, Fault(down=True))
    try:
        for task in light:
            result = orchestrator.serve(twin.id, TaskRequest(prompt=task.prompt))
            assert result.route == "cognitive"
            assert any(h.layer == "edge" and not h.ok for h in result.hops)
    finally:
        for name in stack.meshes:
            stack.bridge.set_fault(name, Fault())


def test_context_environment_down_serves_without_context(stack: Stack) -> None:
    twin = _add(
        stack,
        Capsule(
            id="f-ctx",
            name="c",
            kind="digital_twin",
            domain="f-ctx",
            allowed_environments=["inference", "local", "edge"],
        ),
    )
    orchestrator = Orchestrator(stack.parts)
    home = stack.place_domain(twin.domain)
    stack.bridge.set_fault(home, Fault(down=True))
    try:
        result = orchestrator.serve(twin.id, TaskRequest(prompt=_heavy(twin.domain, 1)[0]))
    finally:
        stack.bridge.set_fault(home, Fault())
    assert result.context is None and not result.learned
    assert result.environment != home


def test_reserved_site_never_serves_a_twin_when_the_clouds_are_down(stack: Stack) -> None:
    """The shipped topology reserves `sovereign` and `sovereign-us` for sovereign capsules; with
    every other cognitive environment down, a digital twin is refused, and the reserved sites'
    own records show they never served it."""
    twin = _add(stack, Capsule(id="f-reserved", name="r", kind="digital_twin", domain="f-res"))
    orchestrator = Orchestrator(stack.parts)
    clouds = [
        e.name for e in stack.bridge.environments_hosting("cognitive") if e.reserved_for is None
    ]
    for name in clouds:
        stack.bridge.set_fault(name, Fault(down=True))
    try:
        for prompt in _heavy(twin.domain):
            with pytest.raises(Unavailable):
                orchestrator.serve(twin.id, TaskRequest(prompt=prompt))
    finally:
        for name in clouds:
            stack.bridge.set_fault(name, Fault())
    for env in stack.topology.environments:
        if env.reserved_for:
            served = [r for r in stack.bridge.served(env.name) if r.capsule_id == twin.id]
            assert served == [], (env.name, served)
