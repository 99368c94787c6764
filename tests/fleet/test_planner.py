"""The planner: optimal against brute force, valid, no worse than greedy, and clear when a
fleet cannot be planned."""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from trifecta.core.errors import Infeasible, InvalidInput
from trifecta.core.settings import Phase
from trifecta.fleet.capsules import Capsule, Demand
from trifecta.fleet.fleetfile import generate_fleet, load_fleet
from trifecta.fleet.greedy import greedy_plan
from trifecta.fleet.plan_check import verify_plan
from trifecta.fleet.plan_model import Plan
from trifecta.fleet.planner import plan
from trifecta.fleet.pools import PoolShape, pool_shapes
from trifecta.fleet.topology import Topology, load_topology, parse_topology

TINY: dict[str, Any] = {
    "name": "tiny",
    "tier_quality": {"userlm-8b": 0.85, "userlm-13b": 0.9},
    "prices": {"riscv-npu": 0.01},  # cheap boards, so that offloading pays
    "environments": [
        {
            "name": "cloud",
            "kind": "inference",
            "provider": "test",
            "region": "r1",
            "nodes": [
                {"name": "a", "accelerator": "a10", "count": 2},
                {"name": "b", "accelerator": "rtx-5090", "count": 2},
            ],
        },
        {
            "name": "site",
            "kind": "sovereign",
            "provider": "test",
            "region": "r2",
            "jurisdiction": "eu",
            "reserved_for": ["sovereign"],
            "nodes": [{"name": "c", "accelerator": "rtx-5090", "count": 2}],
        },
        {
            "name": "mesh",
            "kind": "edge",
            "provider": "test",
            "region": "r3",
            "jurisdiction": "eu",
            "nodes": [{"name": "d", "accelerator": "riscv-npu", "count": 8}],
        },
    ],
}


def tiny_topology() -> Topology:
    return parse_topology(TINY)


def random_fleet(seed: int, size: int) -> list[Capsule]:
    rng = random.Random(seed)
    fleet = []
    for i in range(size):
        kind = rng.choice(["digital_twin", "digital_twin", "sovereign"])
        allowed = ["inference"] if kind == "digital_twin" and rng.random() < 0.3 else None
        fleet.append(
            Capsule(
                id=f"c{i}",
                name=f"c{i}",
                kind=kind,
                domain="d",
                jurisdiction="eu" if kind == "sovereign" else None,
                allowed_environments=allowed,
                quality_target=rng.choice([0.85, 0.85, 0.9]),
                demand=Demand(
                    requests_per_s=rng.choice([1.0, 2.0, 4.0]),
                    tokens_per_request=rng.choice([256, 512]),
                    light_share=rng.choice([0.0, 0.3, 0.6]),
                ),
            )
        )
    return fleet


def brute_force_cost(capsules: list[Capsule], topology: Topology, phase: Phase) -> float:
    """The cheapest plan by enumeration: every home and tier per capsule, every replica count
    of every shape within the devices, every number of edge boards. For fixed choices the
    best offload is closed-form: each cognitive group must push its excess over capacity to
    the edge, no more than its capsules' light requests, all within the boards' capacity."""
    shapes = pool_shapes(topology, phase)
    envs = {e.name: e for e in topology.serving_environments(phase)}
    edge_shapes = [s for s in shapes if s.layer == "edge"]
    assert len(edge_shapes) == 1 and not [s for s in shapes if s.layer == "generative"]
    edge = edge_shapes[0]
    context = {s.environment: s for s in shapes if s.layer == "context"}
    options = []
    for c in capsules:
        homes = [
            (e, t)
            for e in envs
            for t, q in topology.tier_quality.items()
            if q >= c.quality_target
            and envs[e].admits(c)
            and any(s.group == (e, "cognitive", t) for s in shapes)
        ]
        options.append(homes)
    # replica vectors per environment within its devices: (cost, capacity per group)
    per_env: dict[str, list[tuple[float, dict[tuple[str, str, str], float]]]] = {}
    for name, env in envs.items():
        mine = [s for s in shapes if s.environment == name and s.layer == "cognitive"]
        ranges = [range(env.devices(s.accelerator or "") // s.tp + 1) for s in mine]
        vectors = []
        for counts in itertools.product(*ranges):
            used: dict[str, int] = defaultdict(int)
            for s, n in zip(mine, counts, strict=True):
                used[s.accelerator or ""] += n * s.tp
            if any(used[a] > env.devices(a) for a in used):
                continue
            capacity: dict[tuple[str, str, str], float] = defaultdict(float)
            for s, n in zip(mine, counts, strict=True):
                capacity[s.group] += n * s.capacity
            vectors.append((sum(n * s.price for s, n in zip(mine, counts, strict=True)), capacity))
        per_env[name] = vectors
    boards = envs[edge.environment].devices(edge.accelerator or "")
    best = math.inf
    for choice in itertools.product(*options):
        load: dict[tuple[str, str, str], float] = defaultdict(float)
        light: dict[tuple[str, str, str], float] = defaultdict(float)
        requests: dict[str, float] = defaultdict(float)
        for capsule, (home, tier) in zip(capsules, choice, strict=True):
            group = (home, "cognitive", tier)
            load[group] += capsule.demand.tokens_per_s
            if envs[edge.environment].admits(capsule):
                light[group] += capsule.demand.light_share * capsule.demand.tokens_per_s
            requests[home] += capsule.demand.requests_per_s
        fixed = sum(
            math.ceil(r / context[e].capacity - 1e-9) * context[e].price
            for e, r in requests.items()
        )
        home_envs = sorted({g[0] for g in load})
        for chosen in itertools.product(*(per_env[e] for e in home_envs)):
            served: dict[tuple[str, str, str], float] = defaultdict(float)
            for _, cap in chosen:
                for served_group, value in cap.items():
                    served[served_group] += value
            excess = {g: load[g] - served[g] for g in load}
            if any(x > light[g] + 1e-9 for g, x in excess.items()):
                continue
            offload = sum(max(x, 0.0) for x in excess.values())
            needed = math.ceil(offload / edge.capacity - 1e-9) if offload > 1e-9 else 0
            if needed > boards:
                continue
            best = min(best, fixed + sum(v[0] for v in chosen) + needed * edge.price)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_optimal_against_brute_force(seed: int) -> None:
    topology = tiny_topology()
    fleet = random_fleet(seed, 4 + seed % 2)
    expected = brute_force_cost(fleet, topology, "pilot")
    if math.isinf(expected):
        with pytest.raises(Infeasible):
            plan(fleet, topology, "pilot", mip_rel_gap=0.0)
        return
    result = plan(fleet, topology, "pilot", mip_rel_gap=0.0)
    assert result.cost_per_hour == pytest.approx(expected, rel=1e-6)
    assert result.solver.status == "optimal"
    assert verify_plan(result, fleet, topology) == []


def test_brute_force_instances_exercise_every_decision() -> None:
    # the instances above are not trivial: across them, plans use both tiers, the sovereign
    # site, the edge mesh and more than one accelerator type
    seen: dict[str, set[str]] = defaultdict(set)
    for seed in range(8):
        fleet = random_fleet(seed, 4 + seed % 2)
        try:
            result = plan(fleet, tiny_topology(), "pilot", mip_rel_gap=0.0)
        except Infeasible:
            continue
        for pool in result.pools:
            seen["layer"].add(pool.layer)
            seen["accelerator"].add(pool.accelerator or "cpu")
            seen["environment"].add(pool.environment)
        seen["tier"] |= {t for t, n in result.tiers.items() if n}
    assert seen["tier"] == {"userlm-8b", "userlm-13b"}
    assert {"cloud", "site", "mesh"} <= seen["environment"]
    assert {"a10", "rtx-5090", "riscv-npu"} <= seen["accelerator"]


def test_default_fleet_plans_under_the_dev_target() -> None:
    fleet, topology = load_fleet(), load_topology()
    result = plan(fleet, topology, "dev")
    assert result.cost_per_hour <= 5.0 and result.budget_per_hour == 5.0
    assert verify_plan(result, fleet, topology) == []
    assert len(result.assignments) == len(fleet)
    assert {k.kind for k in result.kinds} == {c.kind for c in fleet}
    sovereign = [a for a in result.assignments if a.kind == "sovereign"]
    assert all(a.environment == "sovereign" for a in sovereign)
    playbook = {k.kind: k.playbook_capsule_month for k in result.kinds}
    assert playbook["digital_twin"] == 350 and playbook["sovereign"] == 2000


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["pilot", "full"])
def test_no_worse_than_greedy_and_both_valid(phase: Phase) -> None:
    topology = load_topology(
        Path(__file__).resolve().parents[2] / "examples" / "topologies" / "federation-large.yaml"
    )
    fleet = generate_fleet(300, seed=21, phase=phase)
    optimised, greedy = plan(fleet, topology, phase), greedy_plan(fleet, topology, phase)
    assert verify_plan(optimised, fleet, topology) == []
    assert verify_plan(greedy, fleet, topology) == []
    assert optimised.cost_per_hour <= greedy.cost_per_hour + 1e-6
    assert optimised.solver.lower_bound is not None
    assert optimised.solver.lower_bound <= optimised.cost_per_hour + 1e-6
    # identical capsules are planned together
    assert optimised.solver.classes < len(fleet) / 2


def test_plan_serialises_to_json_and_yaml(tmp_path: Path) -> None:
    result = plan(load_fleet(), load_topology(), "dev")
    for name in ("plan.json", "plan.yaml"):
        result.write(tmp_path / name)
        assert Plan.read(tmp_path / name) == result


def _sovereign(capsule_id: str, jurisdiction: str, rps: float = 0.1) -> Capsule:
    return Capsule(
        id=capsule_id,
        name=capsule_id,
        kind="sovereign",
        domain="gov",
        jurisdiction=jurisdiction,
        demand=Demand(requests_per_s=rps, tokens_per_request=512, light_share=0),
    )


def test_infeasible_sovereignty_names_capsules_and_rule() -> None:
    fleet = [*load_fleet(), _sovereign("gov-uk-1", "uk"), _sovereign("gov-uk-2", "uk")]
    with pytest.raises(Infeasible) as caught:
        plan(fleet, load_topology(), "dev")
    assert caught.value.field == "sovereignty"
    assert "gov-uk-1, gov-uk-2" in caught.value.message and "'uk'" in caught.value.message


def test_infeasible_capacity_names_the_capsules_that_do_not_fit() -> None:
    fleet = [_sovereign(f"gov-{i}", "eu", rps=2.0) for i in range(4)]
    with pytest.raises(Infeasible) as caught:
        plan(fleet, tiny_topology(), "pilot")
    error = caught.value
    assert error.field == "capacity"
    assert "capsules do not fit" in error.message and "gov-" in error.message
    assert "site" in error.message and "rtx-5090 2/2" in error.message


def test_infeasible_quality_and_generative() -> None:
    picky = Capsule(id="picky", name="p", kind="digital_twin", domain="d", quality_target=0.99)
    with pytest.raises(Infeasible) as caught:
        plan([picky], load_topology(), "pilot")
    assert caught.value.field == "quality_target" and "picky" in caught.value.message
    creative = Capsule(
        id="creative",
        name="c",
        kind="digital_twin",
        domain="d",
        quality_target=0.85,
        demand=Demand(requests_per_s=0.1, generative_share=0.3),
    )
    with pytest.raises(Infeasible) as caught:
        plan([creative], tiny_topology(), "pilot")
    assert caught.value.field == "generative_share" and "rnd1-30b-a3b" in caught.value.message


def test_infeasible_phase_target_says_by_how_much() -> None:
    fleet = generate_fleet(60, seed=2, phase="pilot")
    with pytest.raises(Infeasible) as caught:
        plan(fleet, load_topology(), "dev")
    assert caught.value.field == "phase"
    assert "$5.00/hour" in caught.value.message and "costliest capsules" in caught.value.message
    assert plan(fleet, load_topology(), "dev", budget_per_hour=None).cost_per_hour > 5


def test_bad_fleets_are_bad_input() -> None:
    with pytest.raises(InvalidInput) as caught:
        plan([], load_topology(), "dev")
    assert caught.value.field == "fleet"
    twin = Capsule(id="same", name="s", kind="digital_twin", domain="d")
    with pytest.raises(InvalidInput) as caught:
        plan([twin, twin], load_topology(), "dev")
    assert caught.value.field == "id"
    with pytest.raises(InvalidInput) as caught:
        plan([twin], load_topology(), "prod")  # type: ignore[arg-type]
    assert caught.value.field == "phase"


def test_pool_shapes_drop_dominated_parallelism() -> None:
    shapes = pool_shapes(load_topology(), "pilot")
    by_kind: dict[tuple[str, str, str, str | None], list[PoolShape]] = defaultdict(list)
    for shape in shapes:
        by_kind[(*shape.group, shape.accelerator)].append(shape)
    for group in by_kind.values():
        for small, big in itertools.permutations(group, 2):
            if big.tp > small.tp and big.tp % small.tp == 0:
                assert big.capacity > small.capacity * (big.tp // small.tp)


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[2] / "examples" / "fleets").glob("*.yaml"))
)
def test_example_fleets_plan_on_the_default_topology(path: Path) -> None:
    fleet, topology = load_fleet(path), load_topology()
    result = plan(fleet, topology, "pilot")
    assert verify_plan(result, fleet, topology) == []
