"""Any text is a prompt: the OpenAI API answers prompts outside the task family (the tiers'
vocabulary falls back to UTF-8 bytes), and usage counts exactly the tokens it lists."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support import live_server
from trifecta.cognitive.canon_llama import CanonLlamaConfig, CanonLlamaForCausalLM
from trifecta.cognitive.checkpoints import build_tokenizer, tier_vocabulary
from trifecta.cognitive.serving.app import create_app
from trifecta.cognitive.serving.cost import TierRate
from trifecta.cognitive.serving.factory import build_tier
from trifecta.cognitive.serving.service import CognitiveService
from trifecta.cognitive.tiers import load_tier
from trifecta.core.auth import AllowLocal

pytestmark = pytest.mark.integration


def random_tier_model(seed: int = 0) -> Any:
    """A seeded random model of the tiers' architecture and vocabulary (302 tokens)."""
    import torch

    torch.manual_seed(seed)
    vocabulary = tier_vocabulary()
    config = CanonLlamaConfig(
        vocab_size=vocabulary.vocab_size,
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,
        tie_word_embeddings=True,
        bos_token_id=vocabulary.bos_id,
        eos_token_id=vocabulary.eos_id,
        pad_token_id=vocabulary.pad_id,
    )
    model = CanonLlamaForCausalLM(config).eval()
    with torch.no_grad():
        for canon in model.model.canons:
            canon.weight.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def servers(small_rate: TierRate) -> Iterator[dict[str, str]]:
    """Two servers: a random model of the tiers' kind, and the shipped small tier."""
    random = build_tier("small", random_tier_model(), build_tokenizer(), rate=small_rate)
    shipped = build_tier("small", *load_tier("small"), rate=small_rate)
    with (
        live_server(create_app(CognitiveService([random]), auth=AllowLocal())) as random_url,
        live_server(create_app(CognitiveService([shipped]), auth=AllowLocal())) as shipped_url,
    ):
        yield {"random": random_url, "shipped": shipped_url}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("which", ["random", "shipped"])
@pytest.mark.parametrize("prompt", ["What is 7*6?", "Hello, world", "température: 21 °C 🌡"])
def test_a_prompt_outside_the_family_is_answered(
    servers: dict[str, str], which: str, prompt: str
) -> None:
    api = client(servers[which])
    completion = api.completions.create(
        model="small", prompt=prompt, max_tokens=6, temperature=0, logprobs=2
    )
    choice = completion.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert "".join(logprobs.tokens) == choice.text
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(logprobs.tokens)
    assert completion.usage.prompt_tokens == len(tier_vocabulary().encode(prompt, bos=True))
    chat = api.chat.completions.create(
        model="small", messages=[{"role": "user", "content": prompt}], max_tokens=4
    )
    assert chat.choices[0].finish_reason in ("stop", "length")


def test_usage_counts_the_listed_tokens_when_the_model_stops(servers: dict[str, str]) -> None:
    """The shipped tier ends its answer with the end token: usage does not count it, as
    `logprobs.tokens` does not list it."""
    api = client(servers["shipped"])
    completion = api.completions.create(
        model="small", prompt="41+17?", max_tokens=9, temperature=0, logprobs=1
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.text
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(choice.logprobs.tokens) == len(choice.text)


@pytest.mark.parametrize("which", ["random", "shipped"])
def test_a_completion_that_stops_at_once_says_so(servers: dict[str, str], which: str) -> None:
    api = client(servers[which])
    first = api.completions.create(model="small", prompt="41+17?", max_tokens=1, temperature=0)
    assert first.choices[0].text
    stopped = api.completions.create(
        model="small",
        prompt="41+17?",
        max_tokens=4,
        temperature=0,
        logprobs=1,
        stop=[first.choices[0].text],
    )
    choice = stopped.choices[0]
    assert choice.text == "" and choice.finish_reason == "stop"
    assert choice.logprobs is not None and (choice.logprobs.tokens or []) == []
    assert stopped.usage is not None and stopped.usage.completion_tokens == 0
