"""The three backends: same tokens and log-probabilities for the same model, exact entropies,
and one clear error for a bad model directory or endpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.support import free_port, live_server
from trifecta.cognitive.backends import (
    EndpointBackend,
    HuggingFaceBackend,
    backend_from_settings,
    open_backend,
    shipped_tier,
)
from trifecta.cognitive.entropy import entropy_from_logits
from trifecta.cognitive.tiers import load_tier, tier_dir
from trifecta.core.auth import AllowLocal
from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.core.protocols import LanguageModel
from trifecta.core.settings import get_settings
from trifecta.core.tasks import generate_tasks
from trifecta.core.tokenizer import CharTokenizer

PROMPTS = [t.prompt for t in generate_tasks(12, seed=3, split="heldout")]


def test_shipped_tier_loads_like_a_hugging_face_checkpoint() -> None:
    from transformers import LlamaForCausalLM

    model, tokenizer = load_tier("small")
    assert isinstance(model, LlamaForCausalLM)
    chars = CharTokenizer()
    for prompt in PROMPTS:
        assert tokenizer(prompt)["input_ids"] == chars.encode(prompt, bos=True)
    assert tokenizer.decode(chars.encode("41+17?")) == "41+17?"
    assert isinstance(shipped_tier("small"), LanguageModel)


def test_local_directory_and_shipped_tier_agree() -> None:
    local = HuggingFaceBackend.from_directory(tier_dir("medium"), name="medium")
    shipped = shipped_tier("medium")
    a = local.generate(PROMPTS, max_new_tokens=6, top_logprobs=3)
    b = shipped.generate(PROMPTS, max_new_tokens=6, top_logprobs=3)
    for x, y in zip(a, b, strict=True):
        assert x.tokens == y.tokens and x.text == y.text
        assert x.logprobs == pytest.approx(y.logprobs, abs=1e-6)
        assert x.entropies == pytest.approx(y.entropies, abs=1e-6)
        assert [t.token for t in x.top_logprobs[0]] == [t.token for t in y.top_logprobs[0]]


def test_entropies_and_logprobs_are_exact_and_batch_independent() -> None:
    backend = shipped_tier("small")
    model, tokenizer = backend.model, backend.tokenizer
    batched = backend.generate(PROMPTS, max_new_tokens=5)
    for prompt, output in zip(PROMPTS[:4], batched[:4], strict=True):
        alone = backend.generate([prompt], max_new_tokens=5)[0]
        assert alone.tokens == output.tokens
        assert alone.logprobs == pytest.approx(output.logprobs, abs=1e-4)
        # Re-run the whole sequence without a cache and read each step's distribution.
        ids = tokenizer(prompt + output.text)["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        start = len(ids) - len(output.tokens) - 1
        for step, token in enumerate(output.tokens):
            row = logits[start + step]
            assert output.entropies[step] == pytest.approx(
                float(entropy_from_logits(row.numpy())), abs=1e-4
            )
            chosen = tokenizer.convert_tokens_to_ids(token)
            assert output.logprobs[step] == pytest.approx(
                float(torch.log_softmax(row, -1)[chosen]), abs=1e-4
            )


def test_stop_rule_and_stop_strings_end_a_sequence() -> None:
    backend = shipped_tier("small")
    first = backend.generate(PROMPTS[:3], max_new_tokens=6, stop_rule=lambda _i, e, _t: len(e) >= 1)
    assert all(g.completion_tokens == 1 and g.finish_reason == "signal" for g in first)
    short = backend.generate(["41+17?"], max_new_tokens=1)[0]
    assert short.finish_reason in ("length", "stop") and short.completion_tokens <= 1


def test_bad_generation_options_name_the_field() -> None:
    backend = shipped_tier("small")
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        backend.generate(["41+17?"], max_new_tokens=0)
    with pytest.raises(InvalidInput, match="top_logprobs"):
        backend.generate(["41+17?"], top_logprobs=21)
    with pytest.raises(InvalidInput, match="prompt"):
        backend.generate(["41+17?" * 12])  # longer than the 64-position context
    assert backend.generate(["41 + 17?"], max_new_tokens=2)[0].tokens  # any text is answered
    with pytest.raises(InvalidInput, match="prompts"):
        backend.generate("41+17?")
    assert backend.generate([]) == []


def test_bad_model_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="model_path: no model directory"):
        HuggingFaceBackend.from_directory(tmp_path / "missing")
    with pytest.raises(InvalidInput, match=r"missing config\.json"):
        HuggingFaceBackend.from_directory(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="cannot load the checkpoint"):
        HuggingFaceBackend.from_directory(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InvalidInput, match="cannot load the checkpoint"):
        HuggingFaceBackend.from_directory(tmp_path)
    with pytest.raises(InvalidInput, match="model"):
        open_backend("no-such-tier")


def test_bad_endpoint_is_one_clear_error() -> None:
    with pytest.raises(InvalidInput, match="model_endpoint"):
        EndpointBackend("ftp://example.org", "small")
    closed = EndpointBackend(f"http://127.0.0.1:{free_port()}/v1", "small", timeout=5)
    with pytest.raises(Unavailable, match="unreachable"):
        closed.generate(["41+17?"])


def test_backend_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend_from_settings() is None
    monkeypatch.setenv("TRIFECTA_MODEL_ENDPOINT", "http://127.0.0.1:9/v1")
    get_settings.cache_clear()
    with pytest.raises(InvalidInput, match="model_name"):
        backend_from_settings()
    monkeypatch.setenv("TRIFECTA_MODEL_NAME", "small")
    get_settings.cache_clear()
    backend = backend_from_settings()
    assert isinstance(backend, EndpointBackend) and backend.name == "small"


@pytest.mark.integration
@pytest.mark.slow
def test_endpoint_matches_the_local_backends_over_loopback() -> None:
    """The OpenAI-compatible backend against our own server, started here on loopback."""
    app_module = pytest.importorskip("trifecta.cognitive.serving.app")
    app = app_module.create_app(tiers=["small"], auth=AllowLocal())  # not about keys
    local = shipped_tier("small")
    expected = local.generate(PROMPTS, max_new_tokens=6, top_logprobs=2)
    with live_server(app) as base:
        remote = EndpointBackend(base + "/v1", "small", concurrency=4)
        got = remote.generate(PROMPTS, max_new_tokens=6, top_logprobs=2)
        with pytest.raises(InvalidInput, match="model"):
            EndpointBackend(base + "/v1", "no-such-model").generate(["41+17?"])
        remote.close()
    for x, y in zip(got, expected, strict=True):
        assert x.tokens == y.tokens and x.text == y.text
        assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)
        assert [t.token for t in x.top_logprobs[0]] == [t.token for t in y.top_logprobs[0]]
        # Top-20 of a 46-token vocabulary leaves little mass out: the estimate is close.
        for estimate, exact in zip(x.entropies, y.entropies, strict=True):
            assert estimate <= exact + 1e-4
            assert estimate == pytest.approx(exact, abs=0.05 * max(1.0, exact))
    assert not math.isnan(sum(g.logprobs[0] for g in got if g.logprobs))


def test_top_k_estimate_bias_shrinks_with_k() -> None:
    from trifecta.cognitive.estimate_bias import bias_markdown, estimate_bias

    rows = estimate_bias([shipped_tier("small")], PROMPTS, ks=(1, 5, 20))
    by_k = {r.k: r for r in rows}
    assert all(r.mean_bias <= 1e-9 for r in rows)  # a lower bound, never above the exact value
    assert by_k[20].mean_abs_error <= by_k[5].mean_abs_error <= by_k[1].mean_abs_error
    assert "| small | 20 |" in bias_markdown(rows)
