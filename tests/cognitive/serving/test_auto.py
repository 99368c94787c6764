"""`auto`: the escalation cascade over the served tiers, through the live API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.cognitive.serving.reference import greedy_text
from tests.support import live_server
from trifecta.cognitive.cascade import Thresholds
from trifecta.cognitive.serving.app import create_app
from trifecta.cognitive.serving.auto import AutoModel
from trifecta.cognitive.serving.cost import tier_rate
from trifecta.cognitive.serving.factory import build_tier, random_model
from trifecta.cognitive.serving.service import CognitiveService, ServedTier
from trifecta.core.auth import AllowLocal

pytestmark = pytest.mark.integration
PROMPT = "t=41,p=17,r=63;t+r?"


def greedy(served: ServedTier, prompt: str, max_new_tokens: int) -> str:
    model = next(iter(served.pool.dispatcher.engines.values())).model  # type: ignore[attr-defined]
    codec = served.codec
    return greedy_text(model, codec, prompt, max_new_tokens)


@pytest.fixture
def tiers() -> Iterator[list[ServedTier]]:
    served: list[ServedTier] = []
    for seed, (tier, preset, accelerator) in enumerate(
        [("small", "userlm-8b", "a10"), ("medium", "userlm-13b", "a100-80gb")]
    ):
        model, tokenizer = random_model(seed=10 + seed, hidden_size=64 * (seed + 1))
        rate = tier_rate(tier, preset=preset, accelerator=accelerator, phase="dev", batch=4)
        served.append(build_tier(tier, model, tokenizer, rate=rate, max_batch=4))
    yield served
    for served_tier in served:
        served_tier.pool.close()


def serve(tiers: list[ServedTier], threshold: float) -> Any:
    auto = AutoModel(
        tiers,
        thresholds=lambda _capsule: Thresholds(
            aggregate="max", window=2, values={"small": threshold}
        ),
    )
    return live_server(create_app(CognitiveService(tiers, auto=auto), auth=AllowLocal()))


def test_auto_answers_on_the_small_tier_while_it_is_confident(tiers: list[ServedTier]) -> None:
    with serve(tiers, threshold=1e9) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert "auto" in [m.id for m in api.models.list().data]
        response = api.completions.create(model="auto", prompt=PROMPT, max_tokens=6, temperature=0)
    assert response.choices[0].text == greedy(tiers[0], PROMPT, 6)
    assert response.usage.model_extra["cost"]["tier"] == "small"  # type: ignore[union-attr,index]


def test_auto_escalates_when_the_signal_crosses_and_pays_for_both(tiers: list[ServedTier]) -> None:
    with serve(tiers, threshold=-1.0) as url:  # every entropy is above it: hand over at once
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        response = api.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=6,
            temperature=0,
            logprobs=True,
            top_logprobs=2,
        )
        chunks = list(
            api.completions.create(
                model="auto", prompt=PROMPT, max_tokens=6, temperature=0, stream=True
            )
        )
    expected = greedy(tiers[1], PROMPT, 6)
    assert expected != greedy(tiers[0], PROMPT, 6)  # the answer tells which tier gave it
    assert response.choices[0].message.content == expected
    assert all(len(t.top_logprobs) == 2 for t in response.choices[0].logprobs.content or [])  # type: ignore[union-attr]
    cost = response.usage.model_extra["cost"]  # type: ignore[union-attr,index]
    assert cost["tier"] == "small+medium" and cost["accelerator"] == "a10+a100-80gb"
    small_only = tiers[0].rate.cost(len(PROMPT) + 1, 1).accelerator_seconds
    assert cost["accelerator_seconds"] > small_only
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    # The small tier's requests were stopped in their batch as soon as the signal crossed.
    small_engine = next(iter(tiers[0].pool.dispatcher.engines.values()))  # type: ignore[attr-defined]
    assert small_engine.finished["cancelled"] >= 1
