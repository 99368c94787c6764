"""Fleets that do not aggregate: continuous demand, the fluid relaxation's bound, the
rounded plan, and the greedy baseline's two rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from trifecta.core.errors import InvalidInput
from trifecta.fleet import planner as planner_module
from trifecta.fleet.capsules import Capsule, Demand
from trifecta.fleet.classes import build_classes
from trifecta.fleet.fleetfile import generate_fleet
from trifecta.fleet.fluid import capsule_types, relaxation_bound
from trifecta.fleet.greedy import greedy_plan
from trifecta.fleet.plan_check import verify_plan
from trifecta.fleet.plan_model import Plan
from trifecta.fleet.planner import plan
from trifecta.fleet.pools import pool_shapes
from trifecta.fleet.topology import Topology, load_topology, parse_topology

LARGE = Path(__file__).resolve().parents[2] / "examples" / "topologies" / "federation-large.yaml"


def _classes(fleet: list[Capsule], topology: Topology) -> int:
    return len(build_classes(fleet, topology, "full", pool_shapes(topology, "full")))


def test_continuous_demand_defeats_aggregation_and_is_reproducible() -> None:
    topology = load_topology(LARGE)
    catalogue = generate_fleet(400, seed=3, phase="full")
    continuous = generate_fleet(400, seed=3, phase="full", demand="continuous")
    assert continuous == generate_fleet(400, seed=3, phase="full", demand="continuous")
    assert _classes(catalogue, topology) < 120
    assert _classes(continuous, topology) >= 390
    for capsule in continuous:
        d = capsule.demand
        assert d.requests_per_s > 0 and d.tokens_per_request >= 32
        assert d.light_share + d.generative_share <= 1 + 1e-9
    # same kinds, domains and plans: only the demand is drawn
    assert [c.kind for c in catalogue] == [c.kind for c in continuous]


@pytest.fixture(scope="module")
def small_continuous() -> tuple[Topology, list[Capsule], Plan]:
    """30 continuous capsules and their MILP plan (proven within 0.1% of the optimum)."""
    topology = load_topology(LARGE)
    fleet = generate_fleet(30, seed=5, phase="full", demand="continuous")
    return topology, fleet, plan(fleet, topology, "full", time_limit=20.0)


def test_the_relaxation_bounds_the_optimum_from_below(
    small_continuous: tuple[Topology, list[Capsule], Plan],
) -> None:
    topology, fleet, exact = small_continuous
    shapes = pool_shapes(topology, "full")
    classes = build_classes(fleet, topology, "full", shapes)
    bound, targets = relaxation_bound(
        capsule_types(classes), shapes, topology, time_limit=5.0, mip_rel_gap=0.0
    )
    assert exact.solver.method == "milp-highs"  # 30 classes: the MILP solves them
    assert exact.solver.mip_gap is not None and exact.solver.mip_gap <= 1e-3
    assert 0 < bound <= exact.cost_per_hour + 1e-6  # optimum <= the MILP's plan
    # the relaxation places every type's cloud tokens in full
    for t, target in zip(capsule_types(classes), targets, strict=True):
        assert sum(cloud for cloud, _ in target.values()) == pytest.approx(t.total("cloud"))


def test_rounding_path_on_a_small_fleet_is_valid_and_near_the_optimum(
    monkeypatch: pytest.MonkeyPatch, small_continuous: tuple[Topology, list[Capsule], Plan]
) -> None:
    topology, fleet, exact = small_continuous
    optimum_at_least = exact.solver.lower_bound or 0.0
    monkeypatch.setattr(planner_module, "AGGREGATION_LIMIT", 0)
    rounded = plan(fleet, topology, "full")
    assert rounded.solver.method == "fluid-relaxation-rounding"
    assert verify_plan(rounded, fleet, topology) == []
    assert len(rounded.assignments) == len(fleet)
    assert rounded.solver.lower_bound is not None
    assert rounded.solver.lower_bound <= exact.cost_per_hour + 1e-6
    assert optimum_at_least - 1e-6 <= rounded.cost_per_hour <= 1.15 * exact.cost_per_hour


@pytest.mark.slow
def test_a_thousand_continuous_capsules_plan_close_to_their_bound() -> None:
    topology = load_topology(LARGE)
    fleet = generate_fleet(1000, seed=7, phase="full", demand="continuous")
    # a generous limit: HiGHS's limits are wall-clock, and a loaded machine weakens the bound
    result = plan(fleet, topology, "full", time_limit=20.0)
    # the rounded relaxation is one candidate; a re-packed greedy placement may beat it
    assert "fluid-relaxation-rounding" in result.solver.candidates
    assert result.cost_per_hour == pytest.approx(min(result.solver.candidates.values()))
    assert result.solver.classes >= 950
    assert verify_plan(result, fleet, topology) == []
    assert result.solver.mip_gap is not None and 0 <= result.solver.mip_gap < 0.05
    for rule in ("marginal", "price-per-token"):
        greedy = greedy_plan(fleet, topology, "full", rule=rule)
        assert verify_plan(greedy, fleet, topology) == []
        assert result.cost_per_hour <= greedy.cost_per_hour


TWO_CLOUDS: dict[str, Any] = {
    "name": "two-clouds",
    "tier_quality": {"userlm-8b": 0.85},
    "environments": [
        {
            "name": name,
            "kind": "inference",
            "provider": "test",
            "region": name,
            "prices": {"a10": {"dev": price}},
            "nodes": [{"name": "n", "accelerator": "a10", "count": 4}],
        }
        for name, price in (("dear", 1.5), ("cheap", 1.0))
    ],
}


def _twin(capsule_id: str, rps: float, allowed: list[str] | None = None) -> Capsule:
    return Capsule(
        id=capsule_id,
        name=capsule_id,
        kind="digital_twin",
        domain="energy",
        allowed_environments=allowed,
        quality_target=0.85,
        demand=Demand(requests_per_s=rps, tokens_per_request=256, light_share=0),
    )


def test_marginal_rule_fills_an_open_replica_before_opening_a_cheaper_one() -> None:
    """The first (larger) capsule may only use `dear` and opens a replica there with room to
    spare; the second fits in that room at no extra cost, which the marginal rule sees and
    the price-per-token rule does not (it opens a replica in `cheap`)."""
    topology = parse_topology(copy.deepcopy(TWO_CLOUDS))
    fleet = [_twin("big", 0.2, ["dear"]), _twin("small", 0.05)]
    marginal = greedy_plan(fleet, topology, "dev", rule="marginal")
    per_token = greedy_plan(fleet, topology, "dev", rule="price-per-token")
    where = {
        p.solver.method: {a.capsule_id: a.environment for a in p.assignments}
        for p in (marginal, per_token)
    }
    assert where["greedy-first-fit-marginal"]["small"] == "dear"
    assert where["greedy-first-fit-price-per-token"]["small"] == "cheap"
    assert marginal.cost_per_hour < per_token.cost_per_hour
    for p in (marginal, per_token):
        assert verify_plan(p, fleet, topology) == []


def test_fleet_files_read_the_same_with_the_c_loader_and_as_json(tmp_path: Path) -> None:
    import yaml

    from trifecta.fleet import assets
    from trifecta.fleet.fleetfile import dump_fleet, load_fleet

    fleet = generate_fleet(50, seed=2, phase="pilot", demand="continuous")
    dump_fleet(fleet, tmp_path / "f.yaml")
    dump_fleet(fleet, tmp_path / "f.json")
    assert load_fleet(tmp_path / "f.yaml") == fleet == load_fleet(tmp_path / "f.json")
    assert yaml.__with_libyaml__ and assets._SAFE_LOADER is yaml.CSafeLoader
    pure = yaml.load((tmp_path / "f.yaml").read_text(), Loader=yaml.SafeLoader)
    assert assets.read_document(tmp_path / "f.yaml", field="fleet") == pure
    (tmp_path / "bad.json").write_text('{"capsules": [\n  {"id": }\n]}')
    with pytest.raises(InvalidInput, match=r"malformed JSON .* at line 2") as caught:
        load_fleet(tmp_path / "bad.json")
    assert caught.value.field == "fleet"


def test_a_milp_far_from_its_bound_is_compared_with_the_rounded_relaxation(
    monkeypatch: pytest.MonkeyPatch, small_continuous: tuple[Topology, list[Capsule], Plan]
) -> None:
    """Whenever the fallback runs, the plan kept is the cheaper one and stays valid."""
    topology, fleet, exact = small_continuous
    monkeypatch.setattr(planner_module, "FALLBACK_GAP", -1.0)  # always compare
    result = plan(fleet, topology, "full", time_limit=20.0)
    assert verify_plan(result, fleet, topology) == []
    assert result.cost_per_hour <= exact.cost_per_hour * (1 + 1e-3) + 1e-6
    assert result.solver.lower_bound is not None
    assert result.solver.lower_bound <= result.cost_per_hour + 1e-6
