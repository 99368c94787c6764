"""Property: whatever the fleet and topology, no plan ever sends a capsule's work to an
environment that does not admit it (the planner's and the greedy baseline's alike)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from trifecta.core.errors import Infeasible
from trifecta.fleet.capsules import Capsule, Demand
from trifecta.fleet.greedy import greedy_plan
from trifecta.fleet.plan_check import verify_plan
from trifecta.fleet.planner import plan
from trifecta.fleet.topology import Topology, parse_topology

JURISDICTIONS = st.sampled_from([None, "eu", "us", "uk"])


@st.composite
def environments(draw: st.DrawFn) -> list[dict[str, Any]]:
    envs = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["inference", "sovereign", "edge"]))
        accelerators = (
            ["coral-npu", "riscv-npu"] if kind == "edge" else ["a10", "rtx-5090", "a100-80gb"]
        )
        nodes = [
            {
                "name": f"n{j}",
                "accelerator": draw(st.sampled_from(accelerators)),
                "count": draw(st.integers(1, 4)),
            }
            for j in range(draw(st.integers(1, 2)))
        ]
        env: dict[str, Any] = {
            "name": f"{kind}-{i}",
            "kind": kind,
            "provider": "p",
            "region": "r",
            "jurisdiction": draw(JURISDICTIONS),
            "nodes": nodes,
        }
        if kind == "sovereign" and draw(st.booleans()):
            env["reserved_for"] = ["sovereign"]
        envs.append(env)
    return envs


@st.composite
def fleets(draw: st.DrawFn, names: list[str]) -> list[Capsule]:
    capsules = []
    for i in range(draw(st.integers(1, 5))):
        sovereign = draw(st.booleans())
        allowed = draw(
            st.one_of(
                st.none(),
                st.lists(
                    st.sampled_from([*names, "inference", "sovereign", "edge"]),
                    min_size=1,
                    max_size=3,
                ),
            )
        )
        capsules.append(
            Capsule(
                id=f"c{i}",
                name=f"c{i}",
                kind="sovereign" if sovereign else "digital_twin",
                domain="d",
                jurisdiction=draw(st.sampled_from(["eu", "us", "uk"]))
                if sovereign
                else draw(JURISDICTIONS),
                allowed_environments=allowed,
                quality_target=0.85,
                demand=Demand(
                    requests_per_s=draw(st.sampled_from([0.0, 0.05, 0.5, 2.0])),
                    tokens_per_request=256,
                    light_share=draw(st.sampled_from([0.0, 0.5, 1.0])),
                ),
            )
        )
    return capsules


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Topology, list[Capsule]]:
    topology = parse_topology({"name": "random", "environments": draw(environments())})
    return topology, draw(fleets([e.name for e in topology.environments]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_sovereignty_is_never_violated(world: tuple[Topology, list[Capsule]]) -> None:
    topology, capsules = world
    for planner in (plan, greedy_plan):
        try:
            result = planner(capsules, topology, "pilot")
        except Infeasible as error:
            event(f"infeasible: {error.field}")
            assert error.field in {
                "sovereignty",
                "capacity",
                "quality_target",
                "generative_share",
                "phase",
            }
            continue
        event("planned")
        by_id = {c.id: c for c in capsules}
        for item in result.assignments:
            capsule = by_id[item.capsule_id]
            for name in item.environments:
                env = topology.environment(name)
                assert capsule.allows(env) and env.admits(capsule), (capsule.id, name)
        assert verify_plan(result, capsules, topology) == []


def test_a_sovereign_capsule_never_leaves_its_jurisdiction() -> None:
    topology = parse_topology(
        {
            "name": "t",
            "environments": [
                {
                    "name": "cloud",
                    "kind": "inference",
                    "provider": "p",
                    "region": "r",
                    "nodes": [{"name": "g", "accelerator": "h100", "count": 8}],
                },
                {
                    "name": "site-us",
                    "kind": "sovereign",
                    "provider": "p",
                    "region": "r",
                    "jurisdiction": "us",
                    "nodes": [{"name": "g", "accelerator": "a10", "count": 2}],
                },
                {
                    "name": "edge-eu",
                    "kind": "edge",
                    "provider": "p",
                    "region": "r",
                    "jurisdiction": "eu",
                    "nodes": [{"name": "b", "accelerator": "riscv-npu", "count": 50}],
                },
            ],
        }
    )
    gov = Capsule(
        id="gov",
        name="gov",
        kind="sovereign",
        domain="d",
        jurisdiction="us",
        quality_target=0.85,
        demand=Demand(requests_per_s=1, light_share=1.0),
    )
    result = plan([gov], topology, "pilot")
    assert result.assignments[0].environments == {"site-us"}  # not the cheaper eu edge
