"""The prefix-cache cap of the serving engines is a setting (`prefix_cache_tokens` under
`[cognitive]`, `TRIFECTA_COGNITIVE_PREFIX_CACHE_TOKENS`): the soak sets it small so the caches
fill in the run's first half, and an operator sizes it to the memory a tier may hold."""

from __future__ import annotations

import pytest

from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.factory import build_engines, random_model


@pytest.mark.parametrize(("env", "expected"), [(None, 16_384), ("512", 512)])
def test_engines_take_the_prefix_cache_cap_from_the_settings(
    monkeypatch: pytest.MonkeyPatch, env: str | None, expected: int
) -> None:
    monkeypatch.delenv("TRIFECTA_COGNITIVE_PREFIX_CACHE_TOKENS", raising=False)
    if env is not None:
        monkeypatch.setenv("TRIFECTA_COGNITIVE_PREFIX_CACHE_TOKENS", env)
    model, tokenizer = random_model(hidden_size=16, layers=1, heads=2)
    engines = build_engines(model, TokenCodec(tokenizer), tier="t", replicas=2)
    assert [e.prefix_cache.capacity_tokens for e in engines] == [expected, expected]
    explicit = build_engines(
        model, TokenCodec(tokenizer), tier="t", replicas=1, prefix_cache_tokens=64
    )
    assert explicit[0].prefix_cache.capacity_tokens == 64


def test_a_negative_cap_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from trifecta.cognitive.settings import get_cognitive_settings

    monkeypatch.setenv("TRIFECTA_COGNITIVE_PREFIX_CACHE_TOKENS", "-1")
    with pytest.raises(ValidationError, match="prefix_cache_tokens"):
        get_cognitive_settings()
