"""The cognitive layer's language models, all behind one interface (`Backend`, which satisfies
`core.protocols.LanguageModel`):

- `HuggingFaceBackend`: a `transformers` causal LM from a local directory (a real UserLM
  checkpoint loads this way);
- `EndpointBackend`: an OpenAI-compatible completions endpoint (vLLM, llama.cpp, ours), entropy
  estimated from `top_logprobs`;
- `TierBackend`: the shipped tiny tiers (`shipped_tier("small")`), the embedded default.

`backend_from_settings()` gives the configured endpoint (settings `model_endpoint`,
`model_name`, `model_api_key`) or None; `open_backend(spec)` opens any of the three by name.
"""

from __future__ import annotations

from pathlib import Path

from trifecta.cognitive.backends.base import (
    MAX_TOP_LOGPROBS,
    STOPPED_BY_RULE,
    Backend,
    SamplingOptions,
    StopRule,
)
from trifecta.cognitive.backends.endpoint import EndpointBackend
from trifecta.cognitive.backends.huggingface import HuggingFaceBackend
from trifecta.cognitive.backends.shipped import TierBackend, shipped_tier, shipped_tiers
from trifecta.cognitive.tiers import TIER_NAMES
from trifecta.core.errors import InvalidInput
from trifecta.core.settings import Settings, get_settings

__all__ = [
    "MAX_TOP_LOGPROBS",
    "STOPPED_BY_RULE",
    "Backend",
    "EndpointBackend",
    "HuggingFaceBackend",
    "SamplingOptions",
    "StopRule",
    "TierBackend",
    "backend_from_settings",
    "open_backend",
    "shipped_tier",
    "shipped_tiers",
]


def backend_from_settings(settings: Settings | None = None) -> EndpointBackend | None:
    """The OpenAI-compatible endpoint the settings name, or None when none is configured."""
    settings = settings or get_settings()
    if not settings.model_endpoint:
        return None
    if not settings.model_name:
        raise InvalidInput("set model_name together with model_endpoint", field="model_name")
    return EndpointBackend(
        settings.model_endpoint, settings.model_name, api_key=settings.model_api_key
    )


def open_backend(spec: str, *, model_name: str | None = None) -> Backend:
    """A backend from a short spec: a shipped tier's name, an `http(s)://` endpoint base URL
    (with `model_name`), or a local checkpoint directory."""
    if spec in TIER_NAMES:
        return shipped_tier(spec)
    if spec.startswith(("http://", "https://")):
        if not model_name:
            raise InvalidInput("an endpoint needs the model name to ask for", field="model_name")
        return EndpointBackend(spec, model_name)
    path = Path(spec).expanduser()
    if path.exists() or "/" in spec or spec.startswith("."):
        return HuggingFaceBackend.from_directory(path, name=model_name)
    raise InvalidInput(
        f"unknown model {spec!r}: give a tier, an http(s) endpoint or a checkpoint directory",
        field="model",
        allowed=TIER_NAMES,
    )
