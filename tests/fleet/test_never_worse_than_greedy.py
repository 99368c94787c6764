"""The planner never returns a plan that costs more than first fit, whatever its solvers'
time limits leave it (they are wall-clock: a loaded machine stops them early), and a
re-packed greedy placement never costs more than the greedy's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trifecta.core.settings import Phase
from trifecta.fleet.classes import build_classes
from trifecta.fleet.fleetfile import DemandMix, generate_fleet
from trifecta.fleet.fluid import capsule_types
from trifecta.fleet.greedy import GreedyRule, greedy_placement, greedy_plan
from trifecta.fleet.plan_check import verify_plan
from trifecta.fleet.planner import plan
from trifecta.fleet.pools import pool_shapes
from trifecta.fleet.repack import repack
from trifecta.fleet.topology import Topology, load_topology

LARGE = Path(__file__).resolve().parents[2] / "examples" / "topologies" / "federation-large.yaml"


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(LARGE)


@pytest.mark.slow
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(20, 160),
    seed=st.integers(0, 10_000),
    phase=st.sampled_from(["pilot", "full"]),
    demand=st.sampled_from(["catalogue", "continuous"]),
    time_limit=st.sampled_from([0.1, 2.0]),
)
def test_plan_is_never_worse_than_either_greedy_rule(
    topology: Topology, size: int, seed: int, phase: Phase, demand: DemandMix, time_limit: float
) -> None:
    fleet = generate_fleet(size, seed=seed, phase=phase, demand=demand)
    result = plan(fleet, topology, phase, time_limit=time_limit, budget_per_hour=None)
    assert verify_plan(result, fleet, topology) == []
    for rule in ("marginal", "price-per-token"):
        greedy = greedy_plan(fleet, topology, phase, rule=rule)
        assert result.cost_per_hour <= greedy.cost_per_hour + 1e-6
        assert result.solver.candidates[f"greedy-first-fit-{rule}"] == pytest.approx(
            greedy.cost_per_hour
        )
    # a re-packed greedy placement starts from it, so it is never dearer than the better greedy
    costs = result.solver.candidates
    best_greedy = min(costs[f"greedy-first-fit-{rule}"] for rule in ("marginal", "price-per-token"))
    assert all(c <= best_greedy + 1e-6 for m, c in costs.items() if "re-packed" in m)
    # the plan returned is the cheapest candidate, and says which one it is
    assert result.solver.candidates[result.solver.method] == pytest.approx(result.cost_per_hour)
    assert result.cost_per_hour == pytest.approx(min(result.solver.candidates.values()))
    if result.solver.lower_bound is not None:
        assert result.solver.lower_bound <= result.cost_per_hour + 1e-6


@pytest.mark.parametrize("rule", ["marginal", "price-per-token"])
def test_a_repacked_greedy_placement_costs_no_more_and_keeps_every_home(
    topology: Topology, rule: GreedyRule
) -> None:
    fleet = generate_fleet(150, seed=4, phase="full", demand="continuous")
    shapes = pool_shapes(topology, "full")
    classes = build_classes(fleet, topology, "full", shapes)
    placed = greedy_placement(classes, shapes, topology, rule)
    packed = repack(
        placed.decisions,
        placed.replicas,
        capsule_types(classes),
        shapes,
        topology,
        time_limit=0.2,  # far too short to prove anything: the start keeps it no dearer
        mip_rel_gap=0,
    )
    assert packed is not None
    assert packed.cost <= placed.cost_per_hour + 1e-6
    homes = {d.capsule.id: (d.environment, d.tier) for d in placed.decisions}
    assert {d.capsule.id: (d.environment, d.tier) for d in packed.decisions} == homes
    # priced exactly: the replicas it keeps are what it costs
    assert packed.cost == pytest.approx(sum(s.price * n for s, n in packed.replicas.items()))
