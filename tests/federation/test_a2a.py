"""A2A between environments over real loopback HTTP: our server (agent card, JSON-RPC) against
the SDK's own client (`ClientFactory`, through `Delegator` and directly): send, stream, get,
cancel; the capsule as the A2A tenant; sovereignty refused by the sender and, when a sender
skips its check, by the receiver; discovery marking a stopped peer down."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack

import anyio
import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.client.card_resolver import A2ACardResolver
from a2a.helpers.proto_helpers import get_message_text, new_data_part
from a2a.types.a2a_pb2 import AgentCard, Message, Role, SendMessageRequest, TaskState

from tests.federation.a2a_peer import blocking, lookup, peer_app, serving, solver
from trifecta.core.errors import NotFound, SovereigntyViolation, Unavailable
from trifecta.core.tasks import solve
from trifecta.federation.a2a.cards import card_environment, card_manifests
from trifecta.federation.a2a.client import Delegator
from trifecta.federation.a2a.discovery import PeerDirectory
from trifecta.federation.a2a.models import CapsuleTask, DelegatedTask
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import load_topology

pytestmark = pytest.mark.integration
TOPOLOGY = load_topology()
PROMPT = "t=41,p=17,r=63;t+r?"


@pytest.fixture(scope="module")
def inference() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    env = TOPOLOGY.environment("inference")
    with serving(lambda base: peer_app(env, base, solver(env.name, seen))) as (url, _server):
        yield url, seen


@pytest.fixture(scope="module")
def sovereign() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    env = TOPOLOGY.environment("sovereign")
    with serving(lambda base: peer_app(env, base, solver(env.name, seen))) as (url, _server):
        yield url, seen


async def _card(url: str) -> AgentCard:
    async with httpx.AsyncClient() as http:
        return await A2ACardResolver(http, url).get_agent_card()


def test_the_card_names_skills_jurisdiction_and_accelerators(
    sovereign: tuple[str, list[tuple[str, str]]],
) -> None:
    url, _ = sovereign
    raw = httpx.get(f"{url}/.well-known/agent-card.json").json()
    assert raw["supportedInterfaces"][0] == {
        "url": f"{url}/a2a",
        "protocolBinding": "JSONRPC",
        "protocolVersion": "1.0",
    }
    assert {s["id"] for s in raw["skills"]} == {"cognitive", "context"}
    assert all("eu" in s["tags"] for s in raw["skills"])
    card = anyio.run(_card, url)
    env = card_environment(card)
    assert (env.name, env.kind, env.jurisdiction, env.reserved_for) == (
        "sovereign",
        "sovereign",
        "eu",
        ["sovereign"],
    )
    assert set(env.accelerators) == {"rtx-5090", "a100-80gb"}
    assert not env.prices  # the card is public: no prices
    assert [m.capsule_id for m in card_manifests(card)] == ["gov-eu"]


def test_send_stream_get_through_the_sdk_client(
    inference: tuple[str, list[tuple[str, str]]],
) -> None:
    url, seen = inference

    async def scenario() -> tuple[DelegatedTask, list[DelegatedTask], DelegatedTask]:
        card = await _card(url)
        async with Delegator(lookup) as delegator:
            sent = await delegator.send(card, "twin-1", CapsuleTask(prompt=PROMPT))
            streamed = [
                update
                async for update in delegator.stream(
                    card, "twin-1", CapsuleTask(prompt="a=5,b=7;a-b?")
                )
            ]
            accepted = await delegator.send(
                card, "twin-1", CapsuleTask(prompt="x=3,y=9;x+y?"), wait=False
            )
            polled = accepted
            for _ in range(200):
                polled = await delegator.get(card, "twin-1", accepted.task_id)
                if polled.done:
                    break
                await anyio.sleep(0.02)
            failed = await delegator.send(card, "twin-1", CapsuleTask(prompt="a*b?"))
            assert failed.state == "failed" and failed.message.startswith("prompt:")
            return sent, streamed, polled

    sent, streamed, polled = anyio.run(scenario)
    assert sent.state == "completed" and sent.outcome is not None
    assert sent.outcome.answer == solve(PROMPT) and sent.outcome.environment == "inference"
    assert [s.state for s in streamed][-1] == "completed" and "working" in [
        s.state for s in streamed
    ]
    assert streamed[-1].outcome is not None and streamed[-1].outcome.answer == solve("a=5,b=7;a-b?")
    assert polled.state == "completed" and polled.outcome is not None
    assert polled.outcome.answer == solve("x=3,y=9;x+y?")
    # the receiver saw the capsule as the tenant of every task
    assert {capsule for capsule, _ in seen} == {"twin-1"} and len(seen) >= 3


def test_tasks_are_scoped_to_their_capsule(inference: tuple[str, list[tuple[str, str]]]) -> None:
    url, _ = inference

    def lookup_with_second(capsule_id: str) -> Capsule:
        if capsule_id == "twin-2-unknown-ok":
            return Capsule(id=capsule_id, name="t2", kind="digital_twin", domain="energy")
        return lookup(capsule_id)

    async def scoped() -> None:
        card = await _card(url)
        async with Delegator(lookup_with_second) as delegator:
            done = await delegator.send(card, "twin-1", CapsuleTask(prompt=PROMPT))
            with pytest.raises(NotFound, match="task_id"):
                await delegator.get(card, "twin-2-unknown-ok", done.task_id)

    anyio.run(scoped)


def test_cancel_a_running_task() -> None:
    release = threading.Event()
    env = TOPOLOGY.environment("inference")

    async def scenario(url: str) -> tuple[DelegatedTask, DelegatedTask, DelegatedTask]:
        card = await _card(url)
        async with Delegator(lookup) as delegator:
            accepted = await delegator.send(card, "twin-1", CapsuleTask(prompt=PROMPT), wait=False)
            canceled = await delegator.cancel(card, "twin-1", accepted.task_id)
            after = await delegator.get(card, "twin-1", accepted.task_id)
            return accepted, canceled, after

    with serving(lambda base: peer_app(env, base, blocking(release))) as (url, _server):
        try:
            accepted, canceled, after = anyio.run(scenario, url)
        finally:
            release.set()
    assert accepted.state in ("submitted", "working")
    assert canceled.state == "canceled" and after.state == "canceled"


def test_the_sender_refuses_to_cross_a_sovereignty_boundary(
    inference: tuple[str, list[tuple[str, str]]], sovereign: tuple[str, list[tuple[str, str]]]
) -> None:
    (inference_url, inference_seen), (sovereign_url, sovereign_seen) = inference, sovereign
    before = (len(inference_seen), len(sovereign_seen))

    async def scenario() -> DelegatedTask:
        inference_card, sovereign_card = await _card(inference_url), await _card(sovereign_url)
        async with Delegator(lookup) as delegator:
            # a sovereign EU capsule may not leave for a commercial cloud
            with pytest.raises(SovereigntyViolation, match="'inference'"):
                await delegator.send(inference_card, "gov-eu", CapsuleTask(prompt=PROMPT))
            # a site reserved for sovereign capsules takes no digital twin
            with pytest.raises(SovereigntyViolation, match="'sovereign'"):
                await delegator.send(sovereign_card, "twin-1", CapsuleTask(prompt=PROMPT))
            # a US sovereign capsule may not go to the EU sovereign site
            with pytest.raises(SovereigntyViolation):
                await delegator.send(sovereign_card, "gov-us", CapsuleTask(prompt=PROMPT))
            return await delegator.send(sovereign_card, "gov-eu", CapsuleTask(prompt=PROMPT))

    allowed = anyio.run(scenario)
    assert allowed.state == "completed" and allowed.outcome is not None
    assert allowed.outcome.environment == "sovereign"
    # nothing refused reached either receiver; the allowed one did
    assert len(inference_seen) == before[0]
    assert sovereign_seen[before[1] :] == [("gov-eu", PROMPT)]


async def _raw_send(url: str, tenant: str, data: Mapping[str, object]) -> tuple[int, str]:
    """The SDK's client with no check of ours: what a careless or hostile sender does."""
    card = await _card(url)
    async with httpx.AsyncClient() as http:
        client = ClientFactory(ClientConfig(streaming=False, httpx_client=http)).create(card)
        request = SendMessageRequest(
            tenant=tenant,
            message=Message(role=Role.ROLE_USER, message_id="m-1", parts=[new_data_part(data)]),
        )
        events = [event async for event in client.send_message(request)]
    task = events[-1].task
    return task.status.state, get_message_text(task.status.message)


def test_the_receiver_refuses_what_its_environment_does_not_admit(
    inference: tuple[str, list[tuple[str, str]]], sovereign: tuple[str, list[tuple[str, str]]]
) -> None:
    (inference_url, inference_seen), (sovereign_url, sovereign_seen) = inference, sovereign
    before = (len(inference_seen), len(sovereign_seen))
    state, text = anyio.run(_raw_send, inference_url, "gov-eu", {"prompt": PROMPT})
    assert state == TaskState.TASK_STATE_REJECTED
    assert "does not admit capsule 'gov-eu'" in text and text.startswith("tenant:")
    state, text = anyio.run(_raw_send, sovereign_url, "twin-1", {"prompt": PROMPT})
    assert state == TaskState.TASK_STATE_REJECTED and "'twin-1'" in text
    state, text = anyio.run(_raw_send, inference_url, "", {"prompt": PROMPT})
    assert state == TaskState.TASK_STATE_REJECTED and text.startswith("tenant:")
    state, text = anyio.run(_raw_send, inference_url, "nobody", {"prompt": PROMPT})
    assert state == TaskState.TASK_STATE_REJECTED and "nobody" in text
    state, text = anyio.run(_raw_send, inference_url, "twin-1", {"prompt": PROMPT, "max_tokens": 0})
    assert state == TaskState.TASK_STATE_REJECTED and text.startswith("task.max_tokens:")
    assert (len(inference_seen), len(sovereign_seen)) == before  # the handlers never ran


def test_discovery_marks_a_stopped_peer_down() -> None:
    inference, edge = TOPOLOGY.environment("inference"), TOPOLOGY.environment("edge-eu")
    gov_eu = lookup("gov-eu")
    dead_url = "http://127.0.0.1:9"  # the discard port: nothing answers

    with ExitStack() as stack:
        first_url, _ = stack.enter_context(
            serving(lambda base: peer_app(inference, base, solver("inference")))
        )
        second = ExitStack()
        second_url, _ = second.enter_context(
            serving(lambda base: peer_app(edge, base, solver("edge-eu")))
        )
        directory = PeerDirectory(
            [first_url, second_url, dead_url], refresh_s=0.1, timeout_s=0.5, attempts=2
        )

        async def scenario() -> float:
            await directory.refresh()
            assert {p.name for p in directory.peers(up=True)} == {"inference", "edge-eu"}
            assert [p.url for p in directory.peers(up=False)] == [dead_url]
            assert directory.peer("edge-eu").services == ["edge", "tensorlogic"]
            assert [p.name for p in directory.admitting(gov_eu)] == ["edge-eu"]
            published = {r.manifest.capsule_id for r in directory.remote_capsules()}
            assert published == {"twin-1", "gov-eu"}
            stale_card = directory.card("edge-eu")
            async with anyio.create_task_group() as group:
                group.start_soon(directory.run)
                await anyio.to_thread.run_sync(second.close)  # edge-eu stops answering
                stopped = time.monotonic()
                while directory.peer("edge-eu").up and time.monotonic() - stopped < 10:
                    await anyio.sleep(0.02)
                noticed = time.monotonic() - stopped
                directory.stop()
            async with Delegator(lookup) as delegator:  # a card kept from before: Unavailable
                with pytest.raises(Unavailable, match="edge-eu"):
                    await delegator.send(stale_card, "gov-eu", CapsuleTask(prompt=PROMPT))
            await directory.aclose()
            return noticed

        noticed = anyio.run(scenario)
    down = directory.peer("edge-eu")
    assert not down.up and down.failures >= 1 and down.error
    assert noticed < 2.0  # one refresh interval plus the timed-out attempts
    assert directory.peer("inference").up
    with pytest.raises(Unavailable, match="edge-eu"):
        directory.card("edge-eu")
    assert directory.admitting(gov_eu) == []
    assert {r.manifest.capsule_id for r in directory.remote_capsules()} == {"twin-1"}


def test_seeds_come_from_the_topology_urls() -> None:
    data = TOPOLOGY.model_dump(mode="json")
    for env in data["environments"]:
        if env["name"] in ("inference", "sovereign", "edge-eu"):
            env["url"] = f"http://{env['name']}.example:8000/"
    topology = type(TOPOLOGY).model_validate(data)
    directory = PeerDirectory.from_topology(topology, own="inference")
    assert sorted(p.url for p in directory.peers()) == [
        "http://edge-eu.example:8000",
        "http://sovereign.example:8000",
    ]
    assert directory.peers(up=True) == []  # nothing is up before a refresh
    with pytest.raises(NotFound, match="peer"):
        directory.peer("nowhere")
