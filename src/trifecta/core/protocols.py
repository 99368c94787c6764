"""The small interfaces through which the orchestrator composes the layers.

A layer accepts any object that satisfies these protocols; it never imports another layer.
For example the context layer's reflector takes a `LanguageModel`, and the orchestrator hands
it the cognitive layer's backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class TokenAlternative:
    token: str
    logprob: float


@dataclass(frozen=True)
class Generation:
    """One completion with what the escalation policy reads: each generated token, its
    log-probability, and the Shannon entropy (nats) of the next-token distribution it was
    drawn from. `top_logprobs[i]` lists the most likely alternatives at step i when asked."""

    text: str
    tokens: list[str]
    logprobs: list[float]
    entropies: list[float]
    finish_reason: str  # "stop" (end of sequence or a stop string) | "length"
    model: str
    prompt_tokens: int = 0
    top_logprobs: list[list[TokenAlternative]] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


@runtime_checkable
class LanguageModel(Protocol):
    """Anything that completes a batch of prompts: a shipped tier, a local Hugging Face
    checkpoint, an OpenAI-compatible endpoint, the escalating cascade itself."""

    @property
    def name(self) -> str: ...

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        stop: Sequence[str] = (),
    ) -> list[Generation]: ...


@runtime_checkable
class Embedder(Protocol):
    """Text -> L2-normalised float32 vectors of width `dim` (cosine = dot product)."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


@runtime_checkable
class TaskVerifier(Protocol):
    """Checks an answer. Returns None when it cannot tell (the outcome then comes from the
    client's feedback)."""

    def verify(self, prompt: str, answer: str) -> bool | None: ...


@dataclass(frozen=True)
class NamedCompletion:
    """One completion by a model that another layer serves under a name through the OpenAI
    API, priced as the checkpoint it stands for (`preset` on `accelerator`)."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    preset: str
    accelerator: str
    tp_degree: int
    accelerator_seconds: float
    usd: float


@runtime_checkable
class NamedModels(Protocol):
    """Models served by name beside the cognitive tiers (the generative layer's `rnd1`). The
    serve layer hands one to the OpenAI-compatible API, which dispatches on the request's
    `model`; `capsule_id` is the API key's capsule (None: the admin key)."""

    def model_names(self) -> list[str]: ...

    def complete_named(
        self,
        model: str,
        capsule_id: str | None,
        prompts: Sequence[str],
        *,
        max_tokens: int,
        steps: int | None = None,
    ) -> list[NamedCompletion]: ...
