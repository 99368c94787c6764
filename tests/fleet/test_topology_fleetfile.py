"""Topology and fleet files: the shipped defaults, examples, round trips and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from trifecta.core.errors import InvalidInput, NotFound
from trifecta.fleet.capsules import Capsule, Place
from trifecta.fleet.fleetfile import dump_fleet, generate_fleet, load_fleet, parse_fleet
from trifecta.fleet.topology import Environment, load_topology, parse_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_default_topology_has_the_playbook_environments() -> None:
    topology = load_topology()
    names = {e.name for e in topology.environments}
    assert {"local", "training", "inference", "edge", "sovereign"} <= names
    assert topology.environment("sovereign").jurisdiction == "eu"
    assert topology.environment("sovereign").kind == "sovereign"
    assert any(e.kind == "edge" and e.jurisdiction for e in topology.environments)
    assert not topology.environment("training").available_in("pilot")  # a training pool
    assert topology.environment("local").phases == ["dev"]
    with pytest.raises(NotFound) as caught:
        topology.environment("mars")
    assert caught.value.field == "environment"


def test_environment_is_a_place_for_the_sovereignty_rule() -> None:
    topology = load_topology()
    sovereign_eu = Capsule(
        id="gov", name="gov", kind="sovereign", domain="defense", jurisdiction="eu"
    )
    twin = Capsule(id="twin", name="twin", kind="digital_twin", domain="energy")
    env: Place = topology.environment("sovereign")
    assert isinstance(env, Environment)
    assert sovereign_eu.allows(env) and sovereign_eu.allows(topology.environment("edge-eu"))
    assert not sovereign_eu.allows(topology.environment("inference"))
    assert not sovereign_eu.allows(topology.environment("sovereign-us"))
    assert not sovereign_eu.allows(topology.environment("edge"))  # no jurisdiction
    # the sovereign sites are reserved: a digital twin may (by its own rule) but is not admitted
    assert twin.allows(env) and not topology.environment("sovereign").admits(twin)
    assert topology.environment("inference").admits(twin)


def test_prices_environment_over_topology_over_table() -> None:
    data = yaml.safe_load(Path(EXAMPLES / "topologies" / "federation-large.yaml").read_text())
    data["prices"] = {"h100": 3.0}
    data["environments"][1]["prices"] = {"h100": {"full": 2.0}}
    topology = parse_topology(data)
    inference, eu = topology.environment("inference"), topology.environment("inference-eu")
    assert topology.price(inference, "h100", "full") == 2.0
    assert topology.price(inference, "h100", "dev") == 3.0
    assert topology.price(eu, "h100", "dev") == 3.0
    assert topology.price(eu, "a10", "dev") == pytest.approx(1.15)


@pytest.mark.parametrize("path", sorted((EXAMPLES / "topologies").glob("*.yaml")))
def test_example_topologies_load(path: Path) -> None:
    assert load_topology(path).environments


def test_topology_errors_name_the_field(tmp_path: Path) -> None:
    data = yaml.safe_load(Path(EXAMPLES / "topologies" / "federation-large.yaml").read_text())
    data["environments"][2]["nodes"][0]["accelerator"] = "tpu-v9"
    with pytest.raises(InvalidInput) as caught:
        parse_topology(data)
    assert caught.value.field == "topology.environments[2].nodes[0].accelerator"
    assert "tpu-v9" in caught.value.message and "h100" in caught.value.message
    data["environments"][2]["nodes"][0]["accelerator"] = "a10"
    data["environments"].append(dict(data["environments"][0]))
    with pytest.raises(InvalidInput) as caught:
        parse_topology(data)
    assert "duplicate environment" in caught.value.message
    broken = tmp_path / "t.yaml"
    broken.write_text("environments:\n  - name: [x\n")
    with pytest.raises(InvalidInput) as caught:
        load_topology(broken)
    assert caught.value.field == "topology" and "line" in caught.value.message
    with pytest.raises(NotFound):
        load_topology(tmp_path / "missing.yaml")


def test_default_fleet_is_a_few_dozen_capsules_of_both_kinds() -> None:
    fleet = load_fleet()
    assert 24 <= len(fleet) <= 60
    kinds = {c.kind for c in fleet}
    assert {"digital_twin", "sovereign"} <= kinds
    assert len({c.domain for c in fleet}) >= 4
    assert all(c.jurisdiction for c in fleet if c.kind == "sovereign")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_fleet_round_trip(tmp_path: Path, suffix: str) -> None:
    fleet = generate_fleet(40, seed=3, phase="pilot")
    path = tmp_path / f"fleet{suffix}"
    dump_fleet(fleet, path)
    assert load_fleet(path) == fleet
    if suffix == ".json":
        assert json.loads(path.read_text())["capsules"][0]["id"] == fleet[0].id


def test_generated_fleets_are_reproducible_and_mixed() -> None:
    fleet = generate_fleet(500, seed=11, phase="full")
    assert fleet == generate_fleet(500, seed=11, phase="full")
    assert fleet != generate_fleet(500, seed=12, phase="full")
    kinds = {c.kind for c in fleet}
    assert {"digital_twin", "sovereign"} <= kinds
    assert {c.jurisdiction for c in fleet if c.sovereign} == {"eu", "us"}
    assert len({c.domain for c in fleet}) >= 8
    assert len({c.id for c in fleet}) == 500
    # drawn from a small catalogue of profiles, so identical requirements repeat
    profiles = {
        (c.kind, c.jurisdiction, *c.demand.model_dump().values(), c.quality_target) for c in fleet
    }
    assert len(profiles) < 200
    assert all(c.demand.generative_share == 0 for c in generate_fleet(50, seed=1, phase="dev"))


def test_fleet_errors_name_the_capsule_and_field(tmp_path: Path) -> None:
    capsule = {"id": "a", "name": "A", "kind": "digital_twin", "domain": "x"}
    with pytest.raises(InvalidInput) as caught:
        parse_fleet(
            {"capsules": [capsule, {**capsule, "id": "b", "demand": {"requests_per_s": -1}}]}
        )
    assert caught.value.field == "fleet.capsules[1].demand.requests_per_s"
    with pytest.raises(InvalidInput) as caught:
        parse_fleet([capsule, capsule])
    assert "appears twice" in caught.value.message
    with pytest.raises(InvalidInput) as caught:
        parse_fleet([{**capsule, "kind": "sovereign"}])
    assert caught.value.field == "fleet.capsules[0].jurisdiction"
    with pytest.raises(InvalidInput):
        parse_fleet("just a string")
    path = tmp_path / "bad.yaml"
    path.write_text("capsules:\n  - id: a\n    name: {oops\n")
    with pytest.raises(InvalidInput) as caught:
        load_fleet(path)
    assert caught.value.field == "fleet" and "malformed YAML" in caught.value.message
