"""A capsule reads only its own domain unless another is shared with it, and writes only its
own; the Python API and HTTP enforce the same rule."""

from __future__ import annotations

import httpx
import pytest

from tests.context.test_shard_move import places
from tests.support import live_server
from trifecta.context.admin import MoveRequest, ShardAdmin
from trifecta.context.deltas import AddOp, Delta
from trifecta.context.facade import ContextService
from trifecta.context.models import MemoryDraft, MemoryQuery, RenderRequest
from trifecta.context.service import create_app
from trifecta.context.trajectory import Trajectory
from trifecta.core.auth import AllowLocal
from trifecta.core.errors import Conflict, Forbidden, NotFound, SovereigntyViolation
from trifecta.fleet.capsules import Capsule


def seed(service: ContextService) -> None:
    service.apply_delta(
        "twin-a", Delta(ops=[AddOp(op_id="p1", section="strategies", content="Plant secret.")])
    )
    service.add_memories(
        "twin-a", [MemoryDraft(title="plant", content="Plant memory.", outcome="success")]
    )


def test_cross_domain_reads_are_refused_until_shared(service: ContextService) -> None:
    seed(service)
    with pytest.raises(Forbidden) as refused:
        service.playbook("twin-b", domain="plant")
    assert refused.value.field == "domain"
    with pytest.raises(Forbidden):
        service.search_memories("twin-b", MemoryQuery(query="plant", domain="plant"))
    with pytest.raises(Forbidden):
        service.render("twin-b", RenderRequest(domain="plant"))
    assert service.playbook("twin-b").bullets == []  # its own domain is empty

    admin = ShardAdmin(service)
    admin.share("plant", "grid")
    assert [b.content for b in service.playbook("twin-b", domain="plant").bullets] == [
        "Plant secret."
    ]
    assert service.search_memories("twin-b", MemoryQuery(query="plant", domain="plant")).hits
    with pytest.raises(Forbidden):
        service.playbook("gov-1", domain="plant")  # shared with grid only
    admin.unshare("plant", "grid")
    with pytest.raises(Forbidden):
        service.playbook("twin-b", domain="plant")
    admin.share("plant", "*")
    assert service.playbook("twin-b", domain="plant").domain == "plant"
    # Shared with everyone still never crosses a sovereignty boundary.
    with pytest.raises(SovereigntyViolation) as sovereign:
        service.playbook("gov-1", domain="plant")
    assert sovereign.value.field == "domain"


def test_sovereign_domains_are_not_shared_across_tenancies(service: ContextService) -> None:
    admin = ShardAdmin(service)
    for grantee in ("*", "plant"):
        with pytest.raises(SovereigntyViolation) as refused:
            admin.share("gov", grantee)
        assert refused.value.field == "grantee"
    with pytest.raises(SovereigntyViolation):
        admin.share("plant", "gov")


def test_writes_stay_in_the_capsules_own_domain(service: ContextService) -> None:
    with pytest.raises(Forbidden) as refused:
        service.learn(
            Trajectory(capsule_id="twin-b", domain="plant", prompt="1+1?", outcome="success")
        )
    assert refused.value.field == "domain"
    ShardAdmin(service).share("plant", "grid")  # sharing grants reads, never writes
    with pytest.raises(Forbidden):
        service.learn(
            Trajectory(capsule_id="twin-b", domain="plant", prompt="1+1?", outcome="success")
        )


def test_unknown_capsule_and_domain_are_named(service: ContextService) -> None:
    with pytest.raises(NotFound) as capsule:
        service.playbook("nobody")
    assert capsule.value.field == "capsule_id"
    with pytest.raises(NotFound) as domain:
        service.playbook("twin-a", domain="atlantis")
    assert domain.value.field == "domain"


def test_an_emptied_sovereign_domain_keeps_its_tenancy(service: ContextService) -> None:
    """The probe: delete the only capsule of a sovereign domain, then add a digital twin (or a
    sovereign capsule of another jurisdiction) to it. Both are refused, so no sovereign memory
    becomes readable; the domain's own tenancy may still join and finds its context."""
    service.add_memories(
        "gov-1", [MemoryDraft(title="sovereign", content="Sovereign secret.", outcome="success")]
    )
    service.registry.remove("gov-1")
    assert service.tenancy.domain_tenancy("gov") == (True, "eu")
    intruders = [
        Capsule(id="twin-x", name="Probe", kind="digital_twin", domain="gov"),
        Capsule(id="gov-us", name="Probe", kind="sovereign", domain="gov", jurisdiction="us"),
    ]
    for intruder in intruders:
        with pytest.raises(Conflict) as refused:
            service.registry.add(intruder)
        assert refused.value.field == "domain" and "for good" in refused.value.message
        with pytest.raises(Conflict):  # replacing a capsule is no way around it
            service.registry.add_many([intruder], replace=True)
        with pytest.raises(NotFound):  # never registered: it reads nothing
            service.search_memories(intruder.id, MemoryQuery(query="sovereign"))
    with pytest.raises(SovereigntyViolation):  # still sovereign: never shared with everyone
        ShardAdmin(service).share("gov", "*")
    heir = Capsule(id="gov-2", name="Heir", kind="sovereign", domain="gov", jurisdiction="eu")
    service.registry.add(heir)
    hits = service.search_memories("gov-2", MemoryQuery(query="sovereign")).hits
    assert [h.memory.content for h in hits] == ["Sovereign secret."]


def test_sovereign_domain_stays_in_its_jurisdiction(
    service: ContextService, tmp_path: object
) -> None:
    admin = ShardAdmin(service, places=places("inference", "us", **{"aws-us": "sqlite:///u.db"}))
    with pytest.raises(SovereigntyViolation) as refused:
        admin.move("gov", MoveRequest(to="aws-us"))
    assert refused.value.field == "to"


def test_http_enforces_the_same_rule(service: ContextService) -> None:
    seed(service)
    with (
        live_server(create_app(service, auth=AllowLocal())) as url,
        httpx.Client(base_url=url) as http,
    ):
        refused = http.get("/capsules/twin-b/playbook", params={"domain": "plant"})
        assert refused.status_code == 403
        assert refused.json()["error"]["field"] == "domain"
        search = http.post(
            "/capsules/twin-b/memories/search", json={"query": "plant", "domain": "plant"}
        )
        assert search.status_code == 403
        unknown = http.get("/capsules/twin-b/playbook", params={"domain": "atlantis"})
        assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "domain"
        assert http.post("/shards/plant/shares", json={"grantee": "grid"}).status_code == 200
        shared = http.get("/capsules/twin-b/playbook", params={"domain": "plant"})
        assert (
            shared.status_code == 200 and shared.json()["bullets"][0]["content"] == "Plant secret."
        )
        assert http.delete("/shards/plant/shares/grid").status_code == 204
        assert http.get("/capsules/twin-b/playbook", params={"domain": "plant"}).status_code == 403
        # Writes name no domain: a capsule's delta always lands in its own.
        http.post(
            "/capsules/twin-b/deltas",
            json={
                "ops": [{"op": "ADD", "op_id": "g1", "section": "checks", "content": "Grid only."}]
            },
        )
        assert [b["content"] for b in http.get("/capsules/twin-a/playbook").json()["bullets"]] == [
            "Plant secret."
        ]
