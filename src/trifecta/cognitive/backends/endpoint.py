"""Backend over an OpenAI-compatible completions endpoint (vLLM, llama.cpp server, ours).

Endpoints return log-probabilities but not the entropy of each step's distribution, so the
entropy is estimated from `top_logprobs` (`entropy.entropy_from_top_logprobs`); the estimate's
bias against the exact entropy is measured in docs/cognitive.md. The request asks for
`entropy_top_k` alternatives (20, the API's maximum, by default) even when the caller wants
fewer, and trims the returned list to what the caller asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from trifecta.cognitive.backends.base import (
    MAX_TOP_LOGPROBS,
    Backend,
    SamplingOptions,
    StopRule,
)
from trifecta.cognitive.entropy import entropy_from_top_logprobs
from trifecta.core.errors import InvalidInput, TrifectaError, Unavailable
from trifecta.core.protocols import Generation, TokenAlternative


class EndpointBackend(Backend):
    """Calls `POST {base_url}/completions`, one request per prompt, `concurrency` at a time.
    `base_url` includes the API version, as for the `openai` client (`http://host:8000/v1`)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        cost_per_token: float | None = None,
        entropy_top_k: int = MAX_TOP_LOGPROBS,
        timeout: float = 60.0,
        concurrency: int = 8,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        super().__init__(model, cost_per_token=cost_per_token)
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"not an http(s) URL: {base_url!r}", field="model_endpoint")
        if not 1 <= entropy_top_k <= MAX_TOP_LOGPROBS:
            raise InvalidInput(f"must be between 1 and {MAX_TOP_LOGPROBS}", field="entropy_top_k")
        self.base_url = base_url.rstrip("/")
        self.entropy_top_k = entropy_top_k
        self.concurrency = concurrency
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers={**auth, **(headers or {})},
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def _generate(
        self, prompts: list[str], options: SamplingOptions, stop_rule: StopRule | None
    ) -> list[Generation]:
        # A remote server decodes on its own, so `stop_rule` is applied by the caller afterwards.
        if len(prompts) == 1 or self.concurrency <= 1:
            return [self._complete(p, options) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(lambda p: self._complete(p, options), prompts))

    def _complete(self, prompt: str, options: SamplingOptions) -> Generation:
        body: dict[str, Any] = {
            "model": self.name,
            "prompt": prompt,
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "logprobs": max(self.entropy_top_k, options.top_logprobs),
        }
        if options.stop:
            body["stop"] = list(options.stop)
        try:
            response = self._client.post("/completions", json=body)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"model endpoint {self.base_url} is unreachable ({type(exc).__name__})",
                field="model_endpoint",
            ) from None
        if response.status_code >= 400:
            raise _endpoint_error(self.base_url, response)
        try:
            choice = response.json()["choices"][0]
            return self._parse(choice, response.json().get("usage") or {}, options)
        except (ValueError, KeyError, IndexError, TypeError):
            raise Unavailable(
                f"model endpoint {self.base_url} did not answer like an OpenAI completions API",
                field="model_endpoint",
            ) from None

    def _parse(
        self, choice: dict[str, Any], usage: dict[str, Any], options: SamplingOptions
    ) -> Generation:
        block = choice.get("logprobs") or {}
        tokens = [str(t) for t in block.get("tokens") or []]
        logprobs = [float(lp) for lp in block.get("token_logprobs") or []]
        top_maps: list[dict[str, float]] = [dict(m or {}) for m in block.get("top_logprobs") or []]
        entropies = [entropy_from_top_logprobs(list(m.values())) if m else 0.0 for m in top_maps]
        top = (
            [
                [
                    TokenAlternative(tok, float(lp))
                    for tok, lp in sorted(m.items(), key=lambda kv: -kv[1])
                ][: options.top_logprobs]
                for m in top_maps
            ]
            if options.top_logprobs
            else []
        )
        return Generation(
            text=str(choice.get("text", "")),
            tokens=tokens,
            logprobs=logprobs,
            entropies=entropies,
            finish_reason=str(choice.get("finish_reason") or "length"),
            model=self.name,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            top_logprobs=top,
        )


def _endpoint_error(base_url: str, response: httpx.Response) -> TrifectaError:
    """An error response -> our error: 4xx stay the caller's fault, the rest is unavailability."""
    try:
        detail = response.json().get("error", {})
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
    except ValueError:
        message = response.text[:200]
    reason = message or response.reason_phrase
    text = f"model endpoint {base_url} answered {response.status_code}: {reason}"
    if response.status_code in (400, 404, 422):
        return InvalidInput(text, field="model")
    return Unavailable(text, field="model_endpoint")
