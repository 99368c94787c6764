"""The OpenAI-compatible API, driven by the official `openai` client against a live server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.cognitive.serving.reference import greedy_text
from tests.support import live_server
from trifecta.cognitive.serving.app import create_app
from trifecta.cognitive.serving.cost import TierRate
from trifecta.cognitive.serving.factory import build_tier
from trifecta.cognitive.serving.service import CognitiveService
from trifecta.cognitive.serving.tenants import TenantDirectory
from trifecta.core.auth import Principal, StaticKeys
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.registry import CapsuleRegistry

pytestmark = pytest.mark.integration


@pytest.fixture
def server(
    long_context: tuple[Any, Any], small_rate: TierRate
) -> Iterator[tuple[str, CognitiveService]]:
    registry = CapsuleRegistry()  # the test's own SQLite control database
    registry.add(Capsule(id="acme", name="Acme plant", kind="digital_twin", domain="plant"))
    registry.add(
        Capsule(id="tight", name="Rate-limited", kind="digital_twin", domain="plant", quota_rps=1)
    )
    model, tokenizer = long_context
    tier = build_tier("small", model, tokenizer, rate=small_rate, replicas=2, max_batch=4)
    service = CognitiveService([tier], tenants=TenantDirectory(registry.get))
    # Each token stands for its capsule's key ("nobody": a key whose capsule is gone).
    keys = StaticKeys({c: Principal(key_id=c, capsule_id=c) for c in ("acme", "tight", "nobody")})
    with live_server(create_app(service, auth=keys)) as url:
        yield url, service


def client(url: str, capsule: str = "acme") -> openai.OpenAI:
    """A client with the capsule's key: the capsule comes from the key."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key=capsule, max_retries=0, timeout=60)


def greedy(service: CognitiveService, prompt: str, max_new_tokens: int) -> str:
    """What the model says alone, through `transformers`' `generate`."""
    codec = service.served("small").codec
    model = next(iter(service.served("small").pool.dispatcher.engines.values())).model  # type: ignore[attr-defined]
    return greedy_text(model, codec, prompt, max_new_tokens)


def test_models_and_completions_with_logprobs(server: tuple[str, CognitiveService]) -> None:
    url, service = server
    api = client(url)
    assert [m.id for m in api.models.list().data] == ["small"]
    response = api.completions.with_raw_response.create(
        model="small", prompt="t=41,p=17,r=63;p?", max_tokens=8, temperature=0, logprobs=3
    )
    completion = response.parse()
    choice = completion.choices[0]
    assert choice.text == greedy(service, "t=41,p=17,r=63;p?", 8)
    logprobs = choice.logprobs
    assert logprobs is not None and "".join(logprobs.tokens or []) == choice.text
    assert len(logprobs.token_logprobs or []) == len(logprobs.tokens or [])
    assert all(3 <= len(top) <= 4 for top in logprobs.top_logprobs or [])
    usage = completion.usage
    assert usage is not None and usage.completion_tokens >= len(choice.text)
    cost = usage.model_extra["cost"]  # type: ignore[index]
    assert (
        cost["tier"] == "small" and cost["accelerator"] == "a10" and cost["accelerator_seconds"] > 0
    )
    assert response.headers["X-Trifecta-Tier"] == "small"
    assert float(response.headers["X-Trifecta-Accelerator-Seconds"]) == pytest.approx(
        cost["accelerator_seconds"], rel=1e-5
    )


def test_chat_completion_with_top_logprobs(server: tuple[str, CognitiveService]) -> None:
    url, service = server
    chat = client(url).chat.completions.create(
        model="small",
        temperature=0,
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
        n=2,
        messages=[{"role": "system", "content": "t=41,p=17;"}, {"role": "user", "content": "p?"}],
    )
    assert [c.index for c in chat.choices] == [0, 1]
    expected = greedy(service, "t=41,p=17;p?", 5)
    for choice in chat.choices:
        assert choice.message.role == "assistant" and choice.message.content == expected
        content = choice.logprobs.content  # type: ignore[union-attr]
        assert content is not None and "".join(t.token for t in content) == expected
        assert all(
            len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-6
            for t in content
        )
    assert chat.usage is not None and chat.usage.prompt_tokens == 2 * (len("t=41,p=17;p?") + 1)


def test_streaming_gives_the_same_text_and_ends_with_the_cost(
    server: tuple[str, CognitiveService],
) -> None:
    url, service = server
    api = client(url)
    prompt = "41+17-23?"
    chunks = list(
        api.completions.create(
            model="small", prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == greedy(service, prompt, 12)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.model_extra["cost"]["tier"] == "small"  # type: ignore[index]

    stream = api.chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage
    assert "".join(pieces) == greedy(service, prompt, 12)
    assert usage is not None and usage.completion_tokens > 0


def test_a_client_leaving_mid_stream_frees_its_batch_slot(
    server: tuple[str, CognitiveService],
) -> None:
    url, service = server
    engines = service.served("small").pool.dispatcher.engines.values()  # type: ignore[attr-defined]
    stream = client(url).completions.create(
        model="small",
        prompt="1+1?",
        max_tokens=400,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    first = next(iter(stream))
    assert first.choices[0].text
    stream.close()  # walk away after the first chunk
    deadline = time.monotonic() + 20
    while sum(e.finished["cancelled"] for e in engines) < 1:
        assert time.monotonic() < deadline, "the abandoned request kept its slot"
        time.sleep(0.02)
    assert all(e.load().in_flight == 0 for e in engines)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "huge", "prompt": "1+1?"}, 404, "model"),
        ({"model": "small", "prompt": "Hello"}, 400, "prompt"),
        ({"model": "small", "prompt": "1+1?", "max_tokens": 5000}, 400, "max_tokens"),
        ({"model": "small", "prompt": "1+1?", "logprobs": 50}, 400, "logprobs"),
        ({"model": "small", "prompt": "1+1?", "best_of": 2}, 400, "best_of"),
        ({"model": "small", "messages": []}, 400, "messages"),
        (
            {"model": "small", "messages": [{"role": "tool", "content": "1"}]},
            400,
            "messages[0].role",
        ),
        ({"model": "small", "messages": [{"role": "user"}]}, 400, "messages[0].content"),
        (
            {"model": "small", "messages": [{"role": "assistant", "content": "1"}]},
            400,
            "messages[0].role",
        ),
    ],
)
def test_bad_input_gets_an_openai_style_4xx(
    server: tuple[str, CognitiveService], body: dict[str, Any], status: int, param: str
) -> None:
    url, _ = server
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    response = httpx.post(
        url + path, json=body, headers={"Authorization": "Bearer acme"}, timeout=30
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def test_malformed_json_unknown_capsule_and_quota(server: tuple[str, CognitiveService]) -> None:
    url, _ = server
    response = httpx.post(
        url + "/v1/completions",
        content=b"{not json",
        timeout=30,
        headers={"Content-Type": "application/json"},
    )
    assert (
        response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    )

    with pytest.raises(openai.NotFoundError) as unknown:
        client(url, "nobody").completions.create(model="small", prompt="1?", max_tokens=1)
    assert unknown.value.body["param"] == "authorization"  # type: ignore[index]

    tight = client(url, "tight")
    tight.completions.create(model="small", prompt="1?", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        tight.completions.create(model="small", prompt="1?", max_tokens=1)
    assert int(limited.value.response.headers["Retry-After"]) >= 1
    assert limited.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
