"""`/v1/completions` for a model another layer serves by name (`core.protocols.NamedModels`,
handed in by the serve layer: the generative layer's `rnd1`).

Such a model answers a whole prompt at once (a diffusion model fills its response in parallel),
so a streamed answer is one chunk per choice. The capsule is the API key's, admitted through
the same tenant quota as the tiers; the usage carries the cost the serving layer priced.
Options the model cannot honour are refused naming the field, never ignored silently:
log-probabilities and `ignore_eos`. Decoding is greedy by confidence: `temperature`, `top_p`
and `seed` do not apply (documented in docs/generative.md).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Literal

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from trifecta.cognitive.serving.cost import RequestCost
from trifecta.cognitive.serving.openai_format import sse
from trifecta.cognitive.serving.openai_schema import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from trifecta.cognitive.serving.service import CognitiveService
from trifecta.core.errors import InvalidInput
from trifecta.core.protocols import NamedCompletion, NamedModels


def _cost(model: str, completions: list[NamedCompletion]) -> RequestCost:
    first = completions[0]
    return RequestCost(
        tier=model,
        preset=first.preset,
        accelerator=first.accelerator,
        tp_degree=first.tp_degree,
        prompt_tokens=sum(c.prompt_tokens for c in completions),
        completion_tokens=sum(c.completion_tokens for c in completions),
        accelerator_seconds=sum(c.accelerator_seconds for c in completions),
        usd=sum(c.usd for c in completions),
    )


def _cut(
    completion: NamedCompletion, stops: tuple[str, ...]
) -> tuple[str, Literal["stop", "length"]]:
    """The text up to the first stop string, and the finish reason."""
    text = completion.text
    reason: Literal["stop", "length"] = "length" if completion.finish_reason == "length" else "stop"
    cuts = [i for s in stops if (i := text.find(s)) >= 0]
    return (text[: min(cuts)], "stop") if cuts else (text, reason)


async def named_completion(
    service: CognitiveService, named: NamedModels, body: CompletionRequest, capsule: str | None
) -> Response:
    if body.logprobs is not None:
        raise InvalidInput(f"{body.model} does not report log-probabilities", field="logprobs")
    if body.ignore_eos:
        raise InvalidInput(f"{body.model} writes a fixed response region", field="ignore_eos")
    service.admit(capsule)  # the tenant's quota, as for the tiers
    prompts = [p for p in body.prompts() for _ in range(body.n)]
    completions = await run_in_threadpool(
        named.complete_named,
        body.model,
        capsule,
        prompts,
        max_tokens=body.max_tokens,
        steps=body.steps,
    )
    cost = _cost(body.model, completions)
    usage = Usage(
        prompt_tokens=cost.prompt_tokens,
        completion_tokens=cost.completion_tokens,
        total_tokens=cost.prompt_tokens + cost.completion_tokens,
        cost=cost,
    )
    choices = []
    for i, completion in enumerate(completions):
        text, reason = _cut(completion, body.stop_strings())
        choices.append(CompletionChoice(index=i, text=text, finish_reason=reason))
    response_id = f"cmpl-{uuid.uuid4().hex}"

    def response(choices: list[CompletionChoice], usage: Usage | None) -> CompletionResponse:
        return CompletionResponse(id=response_id, model=body.model, choices=choices, usage=usage)

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage

        async def events() -> AsyncIterator[str]:
            for i, choice in enumerate(choices):
                last = i == len(choices) - 1 and not include_usage
                yield sse(response([choice], usage if last else None))
            if include_usage:
                yield sse(response([], usage))
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"X-Trifecta-Tier": body.model, "Cache-Control": "no-cache"},
        )
    headers = {
        "X-Trifecta-Tier": body.model,
        "X-Trifecta-Accelerator": cost.accelerator,
        "X-Trifecta-Tokens": str(usage.total_tokens),
        "X-Trifecta-Accelerator-Seconds": f"{cost.accelerator_seconds:.6g}",
        "X-Trifecta-Cost-Usd": f"{cost.usd:.6g}",
    }
    return JSONResponse(response(choices, usage).model_dump(mode="json"), headers=headers)
