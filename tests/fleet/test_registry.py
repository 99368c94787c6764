"""The capsule registry on SQLite and Postgres, with the new demand field round-tripping."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from trifecta.core.errors import Conflict, NotFound
from trifecta.fleet.capsules import Capsule, Demand
from trifecta.fleet.fleetfile import generate_fleet
from trifecta.fleet.registry import CapsuleRegistry


@pytest.mark.postgres
def test_crud_on_both_back_ends(db_url: str) -> None:
    registry = CapsuleRegistry(create_engine(db_url))
    twin = Capsule(
        id="twin-1",
        name="Twin",
        kind="digital_twin",
        domain="energy",
        demand=Demand(requests_per_s=2, light_share=0.3, generative_share=0.4),
    )
    registry.add(twin)
    assert registry.get("twin-1") == twin
    with pytest.raises(Conflict):
        registry.add(twin)
    assert registry.add_many(generate_fleet(120, seed=5, phase="pilot")) == 120
    assert registry.count() == 121
    assert {c.kind for c in registry.list(kind="sovereign")} == {"sovereign"}
    changed = twin.model_copy(update={"quality_target": 0.95})
    registry.add(changed, replace=True)
    assert registry.get("twin-1").quality_target == 0.95
    registry.remove("twin-1")
    assert registry.find("twin-1") is None
    with pytest.raises(NotFound):
        registry.remove("twin-1")


def test_a_domain_never_mixes_tenancies(sqlite_url: str) -> None:
    from trifecta.core.db import get_engine

    registry = CapsuleRegistry(get_engine(sqlite_url))
    registry.add(Capsule(id="gov-a", name="A", kind="sovereign", domain="gov", jurisdiction="eu"))
    registry.add(Capsule(id="gov-b", name="B", kind="sovereign", domain="gov", jurisdiction="eu"))
    for intruder in (
        Capsule(id="twin", name="T", kind="digital_twin", domain="gov"),
        Capsule(id="gov-us", name="U", kind="sovereign", domain="gov", jurisdiction="us"),
    ):
        with pytest.raises(Conflict) as err:
            registry.add(intruder)
        assert err.value.field == "domain" and intruder.id in err.value.message
    with pytest.raises(Conflict):  # within one batch too
        registry.add_many(
            [
                Capsule(id="x1", name="X", kind="digital_twin", domain="mixed"),
                Capsule(id="x2", name="Y", kind="sovereign", domain="mixed", jurisdiction="eu"),
            ]
        )
    assert registry.count() == 2
