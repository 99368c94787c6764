"""Generated tokens -> the OpenAI API's response pieces: log-probabilities, usage, SSE chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal, Protocol

from trifecta.cognitive.serving.cost import RequestCost
from trifecta.cognitive.serving.openai_schema import (
    ChatCompletionChunk,
    ChatLogprobs,
    CompletionLogprobs,
    CompletionResponse,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from trifecta.cognitive.serving.requests import Completion, GeneratedToken

Chunk = CompletionResponse | ChatCompletionChunk


class Group(Protocol):
    """What a route consumes: a tier's `RequestGroup` or an `auto` call's `AutoGroup`."""

    completions: dict[int, Completion]

    @property
    def label(self) -> str: ...

    @property
    def done(self) -> bool: ...

    def events(
        self, poll_s: float | None = None
    ) -> AsyncIterator[tuple[int, list[GeneratedToken] | None]]: ...

    def cancel(self) -> None: ...

    def cost(self) -> RequestCost: ...


def finish_reason(completion: Completion) -> Literal["stop", "length"]:
    return "length" if completion.finish_reason == "length" else "stop"


def usage_of(group: Group) -> Usage:
    """Token counts of the answers as returned (so `completion_tokens` is the number of
    `logprobs.tokens`: no end token), and the cost of all the work done for them (an `auto`
    request's cost includes the tiers it escalated from)."""
    completions = group.completions.values()
    prompt = sum(c.prompt_tokens for c in completions)
    completion = sum(c.completion_tokens for c in completions)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost=group.cost(),
    )


def response_headers(group: Group, cost: RequestCost) -> dict[str, str]:
    """The cost record as headers, and which replicas served the request."""
    headers = {
        "X-Trifecta-Tier": cost.tier,
        "X-Trifecta-Accelerator": cost.accelerator,
        "X-Trifecta-Tokens": str(cost.prompt_tokens + cost.completion_tokens),
        "X-Trifecta-Accelerator-Seconds": f"{cost.accelerator_seconds:.6g}",
        "X-Trifecta-Cost-Usd": f"{cost.usd:.6g}",
    }
    replicas = sorted({c.replica for c in group.completions.values() if c.replica})
    if replicas:
        headers["X-Trifecta-Replica"] = ",".join(replicas)
    return headers


def completion_logprobs(tokens: list[GeneratedToken], offset: int) -> CompletionLogprobs:
    logprobs = CompletionLogprobs()
    for token in tokens:
        logprobs.tokens.append(token.text)
        logprobs.token_logprobs.append(token.logprob)
        # The API lists the chosen token beside the top alternatives (up to logprobs + 1).
        top = {alt.token: alt.logprob for alt in token.top}
        logprobs.top_logprobs.append({**top, token.name: token.logprob} if token.top else {})
        logprobs.text_offset.append(offset)
        offset += len(token.text)
    return logprobs


def chat_logprobs(tokens: list[GeneratedToken]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            TokenLogprob(
                token=token.text,
                logprob=token.logprob,
                bytes=list(token.text.encode()),
                top_logprobs=[
                    TopLogprob(token=alt.token, logprob=alt.logprob, bytes=list(alt.token.encode()))
                    for alt in token.top
                ],
            )
            for token in tokens
        ]
    )


def sse(chunk: Chunk) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"
