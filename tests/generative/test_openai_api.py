"""`/v1/completions` serves the generative model by name through `trifecta serve`, over real
HTTP on loopback with a capsule's key: the capsule's expert mask applies (its recorded traffic
never touches a masked expert), usage and cost are reported, and bad input is 400 naming the
field."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.generative.conftest import mask_experts
from tests.support import live_server
from trifecta.cognitive.serving.factory import build_service
from trifecta.cognitive.serving.tenants import TenantDirectory
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.generative.selection import configured_mask
from trifecta.orchestrator.stack import Stack
from trifecta.serve.app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TWIN = Capsule(id="gen-twin", name="Generative twin", kind="digital_twin", domain="gen-grid")
PROMPTS = ["t=41,p=17,r=63;t+r-p?", "41+17-23?"]


@dataclass
class Served:
    url: str
    stack: Stack
    capsule_key: str
    admin_key: str


@pytest.fixture(scope="module")
def served(stack: Stack) -> Iterator[Served]:
    stack.add_capsule(TWIN)
    assert stack.generative is not None
    c = stack.generative.model.config
    stack.generative.store.put_mask(TWIN.id, configured_mask(mask_experts(c.top_k), c.n_layers))
    keys = KeyStore(stack.engine)
    capsule_key = keys.create(capsule_id=TWIN.id).token
    admin_key = keys.create(admin=True).token
    tenants = TenantDirectory(stack.capsules.registry.get)
    cognitive = build_service(tiers=["small"], phase=stack.phase, tenants=tenants)
    with live_server(create_app(stack, cognitive=cognitive, auth=keys)) as url:
        yield Served(url, stack, capsule_key, admin_key)


def test_the_model_is_listed_and_answers_with_the_capsules_experts(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.capsule_key)
    assert {"rnd1", "rnd1-30b-a3b", "small"} <= {m.id for m in client.models.list().data}
    completion = client.completions.create(model="rnd1", prompt=PROMPTS, max_tokens=20)
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.text and "=" in c.text for c in completion.choices)  # a worked scratchpad
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == sum(len(p) + 1 for p in PROMPTS)
    assert usage.completion_tokens == sum(len(c.text) for c in completion.choices)
    cost = usage.model_extra["cost"] if usage.model_extra else {}
    assert cost["preset"] == "rnd1-30b-a3b" and cost["usd"] > 0

    # The key's capsule was served with its mask: its traffic reached those experts only.
    assert served.stack.generative is not None
    traffic = served.stack.generative.store.traffic(TWIN.id)
    assert traffic is not None
    load, requests = traffic
    assert requests == len(PROMPTS)
    assert load.sum() > 0
    allowed = mask_experts(served.stack.generative.model.config.top_k)
    masked = [e for e in range(load.shape[1]) if e not in allowed]
    assert float(load[:, masked].sum()) == 0.0


def test_max_tokens_truncates_and_streaming_gives_one_chunk_per_choice(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.capsule_key}"}
    with httpx.Client(base_url=served.url, headers=headers, timeout=60) as http:
        short = http.post(
            "/v1/completions", json={"model": "rnd1", "prompt": PROMPTS[0], "max_tokens": 3}
        )
        assert short.status_code == 200, short.text
        choice = short.json()["choices"][0]
        assert len(choice["text"]) == 3 and choice["finish_reason"] == "length"
        assert short.headers["X-Trifecta-Tier"] == "rnd1"
        streamed = http.post(
            "/v1/completions",
            json={"model": "rnd1-30b-a3b", "prompt": PROMPTS, "stream": True, "steps": 8},
        )
        events = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) == len(PROMPTS) + 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "rnd1", "prompt": "41+17?", "steps": 0}, "steps"),
        ({"model": "rnd1", "prompt": "41+17?", "steps": 2}, "steps"),  # fewer than its 3 blocks
        ({"model": "rnd1", "prompt": "x" * 61}, "prompt"),
        ({"model": "rnd1", "prompt": "Hello?"}, "prompt"),  # outside the model's alphabet
        ({"model": "rnd1", "prompt": "41+17?", "logprobs": 1}, "logprobs"),
        ({"model": "small", "prompt": "41+17?", "steps": 4}, "steps"),
        ({"model": "rnd2", "prompt": "41+17?"}, "model"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    served: Served, body: dict[str, object], param: str
) -> None:
    headers = {"Authorization": f"Bearer {served.capsule_key}"}
    response = httpx.post(f"{served.url}/v1/completions", json=body, headers=headers, timeout=30)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param


def test_the_admin_key_is_served_without_a_capsule_mask(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=served.admin_key)
    completion = client.completions.create(model="rnd1", prompt="41+17?", max_tokens=20)
    assert completion.choices[0].text


def test_the_server_mounts_the_placement_routes_for_the_admin_key_only(served: Served) -> None:
    """`trifecta serve` exposes the generative placement (its own tests: tests/serve): this
    stack runs the experts in the model, so the read says so and a rebalance is 409."""
    admin = {"Authorization": f"Bearer {served.admin_key}"}
    tenant = {"Authorization": f"Bearer {served.capsule_key}"}
    with httpx.Client(base_url=served.url, timeout=30) as http:
        view = http.get("/v1/generative/placement", headers=admin)
        assert view.status_code == 200, view.text
        assert view.json()["placed"] is False and view.json()["nodes"] == 0
        refused = http.get("/v1/generative/placement", headers=tenant)
        assert refused.status_code == 403 and refused.json()["error"]["field"] == "authorization"
        denied = http.post("/v1/generative/placement/rebalance", json={"add": 1}, headers=tenant)
        assert denied.status_code == 403
        rebalance = http.post("/v1/generative/placement/rebalance", json={}, headers=admin)
        assert rebalance.status_code == 409 and rebalance.json()["error"]["field"] == "expert_nodes"
