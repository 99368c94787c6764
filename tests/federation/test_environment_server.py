"""One environment as its own server: the typed hops over real HTTP (uvicorn on loopback), the
federation credential, the receiver's own placement check and record, typed errors back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import live_server
from trifecta.core import db
from trifecta.core.errors import SovereigntyViolation, Unauthenticated, Unavailable
from trifecta.core.settings import Settings
from trifecta.federation.http_client import HttpBridge
from trifecta.federation.services import OffloadRequest
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.fleet.topology import Topology, load_topology
from trifecta.serve.environment import EnvironmentSite, create_environment_app

pytestmark = [pytest.mark.integration]
CREDENTIAL = "test-federation-credential"
TWIN = Capsule(id="srv-twin", name="t", kind="digital_twin", domain="srv-twin")
GOV = Capsule(id="srv-gov", name="g", kind="sovereign", domain="srv-gov", jurisdiction="us")


@pytest.fixture(scope="module")
def edge_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Topology]]:
    data = Path(tmp_path_factory.mktemp("env"))
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
    CapsuleRegistry(db.get_engine(settings.db_url)).add_many([TWIN, GOV])
    topology = load_topology()
    site = EnvironmentSite(topology, "edge-eu", settings)
    app = create_environment_app(site, base_url="http://placeholder", credential=CREDENTIAL)
    with live_server(app) as url:
        yield url, topology
    site.close()
    db.dispose_engines()


def test_a_peer_without_the_credential_is_refused(edge_site: tuple[str, Topology]) -> None:
    url, topology = edge_site
    plain = httpx.get(url + "/federation/v1/health", timeout=10)
    assert plain.status_code == 401 and plain.json()["error"]["field"] == "authorization"
    with pytest.raises(Unauthenticated):
        HttpBridge(topology, {"edge-eu": url}, credential="wrong").health("edge-eu")


def test_typed_hops_and_the_receivers_own_record(edge_site: tuple[str, Topology]) -> None:
    url, topology = edge_site
    bridge = HttpBridge(topology, {"edge-eu": url}, credential=CREDENTIAL)
    try:
        assert [e.name for e in bridge.environments_hosting("edge")] == ["edge-eu"]
        answer = bridge.edge(TWIN, "edge-eu").offload(
            OffloadRequest(capsule_id=TWIN.id, prompts=["a=12,b=30;b?"], max_new_tokens=4)
        )
        assert answer.offloaded and answer.generations[0].text.strip() == "30"
        # a US sovereign capsule: the sender refuses, and so does the receiver on its own
        with pytest.raises(SovereigntyViolation):
            bridge.edge(GOV, "edge-eu")
        raw = httpx.post(
            url + "/federation/v1/edge/offload",
            json={"capsule_id": GOV.id, "prompts": ["1+1?"]},
            headers={"Authorization": f"Bearer {CREDENTIAL}"},
            timeout=10,
        )
        assert raw.status_code == 403 and raw.json()["error"]["code"] == "sovereignty_violation"
        records = bridge.served("edge-eu")
        assert [(r.capsule_id, r.ok) for r in records] == [(TWIN.id, True), (GOV.id, False)]
        health = bridge.health("edge-eu")
        assert health.served == 1 and health.refused == 1 and health.edge_nodes == 1
        bad = httpx.post(
            url + "/federation/v1/edge/offload",
            json={"capsule_id": TWIN.id, "prompts": []},
            headers={"Authorization": f"Bearer {CREDENTIAL}"},
            timeout=10,
        )
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "prompts"
    finally:
        bridge.close()


def test_the_agent_card_names_the_site(edge_site: tuple[str, Topology]) -> None:
    url, _ = edge_site
    card = httpx.get(url + "/.well-known/agent-card.json", timeout=10).json()
    assert card["name"] == "trifecta-edge-eu"
    assert [s["id"] for s in card["skills"]] == ["edge", "tensorlogic"]


def test_the_a2a_endpoint_of_an_environment_server_needs_the_credential(
    edge_site: tuple[str, Topology],
) -> None:
    """As `trifecta env serve` wires it: a delegated task without the credential is 401 and
    the site serves nothing; the card is public without the capsules the site homes."""
    url, topology = edge_site
    before = HttpBridge(topology, {"edge-eu": url}, credential=CREDENTIAL)
    try:
        served = len(before.served("edge-eu"))
        task = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {
                "tenant": TWIN.id,
                "message": {"role": "ROLE_USER", "messageId": "m", "parts": [{"text": "1+1?"}]},
            },
        }
        refused = httpx.post(url + "/a2a", json=task, headers={"A2A-Version": "1.0"}, timeout=10)
        assert refused.status_code == 401
        assert len(before.served("edge-eu")) == served
    finally:
        before.close()
    public = httpx.get(url + "/.well-known/agent-card.json", timeout=10)
    assert TWIN.id not in public.text
    whole = httpx.get(
        url + "/.well-known/agent-card.json",
        headers={"Authorization": f"Bearer {CREDENTIAL}"},
        timeout=10,
    )
    assert TWIN.id in whole.text and GOV.id not in whole.text  # edge-eu does not admit GOV


def test_an_unreachable_environment_is_unavailable() -> None:
    bridge = HttpBridge(load_topology(), {"inference": "http://127.0.0.1:9"})
    try:
        assert bridge.environments_hosting("cognitive") == []
        assert not bridge.is_up("inference")
        with pytest.raises(Unavailable, match="inference"):
            bridge.health("inference")
    finally:
        bridge.close()
