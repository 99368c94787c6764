"""The federation credential on A2A, from the receiving side: a peer's JSON-RPC endpoint
answers 401 to a request without the credential or with a wrong one (and runs nothing), and
serves a `Delegator` that presents it; the agent card stays public for discovery, but names
the capsules the environment homes only to a peer presenting the credential."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest
from a2a.client.card_resolver import A2ACardResolver
from a2a.types.a2a_pb2 import AgentCard

from tests.federation.a2a_peer import lookup, peer_app, serving, solver
from trifecta.core.errors import Unavailable
from trifecta.federation.a2a.cards import card_environment
from trifecta.federation.a2a.client import Delegator
from trifecta.federation.a2a.discovery import PeerDirectory
from trifecta.federation.a2a.models import CapsuleTask
from trifecta.fleet.capsule_uri import CardCatalog
from trifecta.fleet.manifest import card_extension, manifests_in_card
from trifecta.fleet.topology import load_topology

pytestmark = pytest.mark.integration
CREDENTIAL = "federation-secret-of-this-test"
PROMPT = "t=41,p=17,r=63;t+r?"
SEND = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "SendMessage",
    "params": {
        "tenant": "twin-1",
        "message": {"role": "ROLE_USER", "messageId": "m-1", "parts": [{"text": PROMPT}]},
    },
}


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    env = load_topology().environment("inference")
    app = lambda base: peer_app(env, base, solver(env.name, seen), credential=CREDENTIAL)  # noqa: E731
    with serving(app) as (url, _server):
        yield url, seen


async def _card(url: str) -> AgentCard:
    async with httpx.AsyncClient() as http:
        return await A2ACardResolver(http, url).get_agent_card()


def test_the_rpc_endpoint_refuses_a_peer_without_the_credential(
    guarded: tuple[str, list[tuple[str, str]]],
) -> None:
    url, seen = guarded
    headers = {"A2A-Version": "1.0"}
    for authorization in (None, "Bearer wrong", f"Basic {CREDENTIAL}", CREDENTIAL):
        sent = dict(headers, Authorization=authorization) if authorization else headers
        answer = httpx.post(f"{url}/a2a", json=SEND, headers=sent, timeout=10)
        assert answer.status_code == 401, (authorization, answer.text)
        assert answer.json()["error"]["field"] == "authorization"
    assert seen == []  # nothing ran


def test_the_card_is_public_but_lists_homed_capsules_only_to_peers(
    guarded: tuple[str, list[tuple[str, str]]],
) -> None:
    url, _ = guarded
    card_url = f"{url}/.well-known/agent-card.json"
    for authorization in (None, "Bearer wrong"):  # anyone: discovery works, no tenant named
        headers = {"Authorization": authorization} if authorization else {}
        public = httpx.get(card_url, headers=headers, timeout=10)
        assert public.status_code == 200 and public.json()["name"] == "trifecta-inference"
        assert card_environment_of(public.json()) == "inference"
        assert manifests_in_card(public.json()) == [] and "twin-1" not in public.text
    whole = httpx.get(card_url, headers={"Authorization": f"Bearer {CREDENTIAL}"}, timeout=10)
    assert [m.capsule_id for m in manifests_in_card(whole.json())] == ["twin-1"]

    async def discover(credential: str | None) -> list[str]:
        directory = PeerDirectory([url], credential=credential)
        try:
            (peer,) = await directory.refresh()
            assert peer.up and peer.name == "inference"
            return [c.manifest.capsule_id for c in directory.remote_capsules()]
        finally:
            await directory.aclose()

    assert anyio.run(discover, None) == []
    assert anyio.run(discover, CREDENTIAL) == ["twin-1"]
    assert [c.manifest.capsule_id for c in CardCatalog([url]).remote_capsules()] == []
    peer = CardCatalog([url], credential=CREDENTIAL).remote_capsules()
    assert [c.manifest.capsule_id for c in peer] == ["twin-1"]


def card_environment_of(card: dict[str, object]) -> str:
    return str(card_extension(card)["environment"]["name"])


def test_a_delegator_with_the_credential_is_served_and_one_without_is_not(
    guarded: tuple[str, list[tuple[str, str]]],
) -> None:
    url, seen = guarded

    async def scenario() -> None:
        card = await _card(url)
        assert card_environment(card).name == "inference"
        async with Delegator(lookup) as stranger:
            with pytest.raises(Unavailable) as refused:
                await stranger.send(card, "twin-1", CapsuleTask(prompt=PROMPT))
            assert "401" in refused.value.message
        assert seen == []
        async with Delegator(lookup, credential=CREDENTIAL) as peer:
            done = await peer.send(card, "twin-1", CapsuleTask(prompt=PROMPT))
            assert done.state == "completed" and done.outcome is not None
            assert done.outcome.answer == "104"
            polled = await peer.get(card, "twin-1", done.task_id)
            assert polled.state == "completed"
            streamed = [u async for u in peer.stream(card, "twin-1", CapsuleTask(prompt=PROMPT))]
            assert streamed[-1].state == "completed"

    anyio.run(scenario)
    assert [capsule for capsule, _ in seen] == ["twin-1", "twin-1"]
