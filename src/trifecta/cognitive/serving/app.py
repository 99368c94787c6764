"""The OpenAI-compatible HTTP API: `/v1/models`, `/v1/completions`, `/v1/chat/completions`.

The model name picks a tier (or `auto`, the escalating cascade); the capsule is the one of
the request's API key (`Authorization: Bearer <key>`, checked by `core.auth`), never a header
the client chooses, and decides the request's share of the tier and its quota (the admin key
is served as the anonymous tenant). Responses
stream over server-sent events when asked; every response carries its cost (`usage.cost`,
and `X-Trifecta-*` headers when not streaming). A client that disconnects frees its batch slot
at the replica's next step.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from trifecta.cognitive.serving.named import named_completion
from trifecta.cognitive.serving.openai_errors import OpenAIRoute
from trifecta.cognitive.serving.openai_format import (
    Chunk,
    Group,
    chat_logprobs,
    completion_logprobs,
    finish_reason,
    response_headers,
    sse,
    usage_of,
)
from trifecta.cognitive.serving.openai_schema import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    Usage,
)
from trifecta.cognitive.serving.requests import GeneratedToken, SamplingParams
from trifecta.cognitive.serving.service import CognitiveService
from trifecta.cognitive.tiers import AUTO_MODEL
from trifecta.core.auth import Authenticator, Principal, authenticated
from trifecta.core.errors import InvalidInput
from trifecta.core.http import install_error_handlers
from trifecta.core.protocols import NamedModels

DISCONNECT_POLL_S = 0.25
MAX_BODY_BYTES = 1 << 20  # prompts are short; anything near this is a mistake or an attack
Body = CompletionRequest | ChatCompletionRequest


def _params(body: Body, max_tokens: int, top: int, choice: int) -> SamplingParams:
    seed = body.seed + choice if body.seed is not None else None
    return SamplingParams(
        max_tokens, body.temperature, body.top_p, top, body.stop_strings(), seed, body.ignore_eos
    )


def _start(
    service: CognitiveService,
    body: Body,
    prompts: list[str],
    field: str,
    max_tokens: int | None,
    top: int,
    capsule: str | None,
) -> Group:
    """Check the prompts, admit the capsule, and start every choice of the call."""
    served = service.served(body.model)
    encoded = [
        served.encode(
            p, field=f"{field}.{i}" if len(prompts) > 1 else field, max_new_tokens=max_tokens
        )
        for i, p in enumerate(prompts)
    ]
    tenant = service.admit(capsule)
    if body.model == AUTO_MODEL and service.auto is not None:
        from trifecta.cognitive.backends.base import SamplingOptions
        from trifecta.cognitive.serving.auto import AutoGroup

        limit = min(budget for _, budget in encoded)
        options = SamplingOptions(limit, body.temperature, top, body.stop_strings())
        texts = [p for p in prompts for _ in range(body.n)]
        return AutoGroup(service.auto, tenant, texts, options, top_p=body.top_p, seed=body.seed)
    items = [(ids, _params(body, budget, top, j)) for ids, budget in encoded for j in range(body.n)]
    return service.start(served, tenant, items)


async def _collect(group: Group, request: Request) -> dict[int, list[GeneratedToken]] | None:
    """Every choice's tokens, or None if the client went away (its requests are cancelled)."""
    tokens: dict[int, list[GeneratedToken]] = {}
    try:
        async for index, generated in group.events(poll_s=DISCONNECT_POLL_S):
            if index < 0:
                if await request.is_disconnected():
                    return None
            elif generated:
                tokens.setdefault(index, []).extend(generated)
    finally:
        if not group.done:
            group.cancel()
    return tokens


def _stream(
    group: Group,
    chunks: Callable[[int, list[GeneratedToken] | None], list[Chunk]],
    usage_chunk: Callable[[Usage], Chunk],
    include_usage: bool,
) -> StreamingResponse:
    """SSE of the group's chunks. The usage (with the cost) comes as the API sends it, a last
    chunk without choices, when the client asked for it; otherwise it rides on the final
    chunk, so that clients reading `choices[0]` of every chunk keep working."""

    async def body() -> AsyncIterator[str]:
        try:
            async for index, generated in group.events():
                out = chunks(index, generated)
                if group.done and not include_usage:
                    out[-1].usage = usage_of(group)
                for chunk in out:
                    yield sse(chunk)
            if include_usage:
                yield sse(usage_chunk(usage_of(group)))
            yield "data: [DONE]\n\n"
        finally:
            if not group.done:  # the client disconnected mid-stream: free the batch slots
                group.cancel()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"X-Trifecta-Tier": group.label, "Cache-Control": "no-cache"},
    )


def _include_usage(body: Body) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _json(
    model: CompletionResponse | ChatCompletionResponse, group: Group, usage: Usage
) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), headers=response_headers(group, usage.cost))


def build_router(
    service: CognitiveService, *, auth: Authenticator, named: NamedModels | None = None
) -> APIRouter:
    """The API over the tiers, and over `named`'s models (another layer's, composed by the
    serve layer) on `/v1/completions`."""
    router = APIRouter(route_class=OpenAIRoute)
    caller = Depends(authenticated(auth))
    named_models = set(named.model_names()) if named is not None else set()

    @router.get("/v1/models", response_model=ModelList, dependencies=[caller])
    async def list_models() -> ModelList:
        names = [*service.model_names(), *sorted(named_models)]
        return ModelList(data=[ModelCard(id=name) for name in names])

    @router.post("/v1/completions", response_model=None)
    async def completions(
        body: CompletionRequest, request: Request, key: Principal = caller
    ) -> Response:
        if named is not None and body.model in named_models:
            return await named_completion(service, named, body, key.capsule_id)
        if body.steps is not None:
            raise InvalidInput(f"{body.model} takes no denoising steps", field="steps")
        group = _start(
            service,
            body,
            body.prompts(),
            "prompt",
            body.max_tokens,
            body.logprobs or 0,
            key.capsule_id,
        )
        completion_id = f"cmpl-{uuid.uuid4().hex}"
        with_logprobs = body.logprobs is not None

        def response(
            choices: list[CompletionChoice], usage: Usage | None = None
        ) -> CompletionResponse:
            return CompletionResponse(
                id=completion_id, model=body.model, choices=choices, usage=usage
            )

        if body.stream:
            offsets: dict[int, int] = {}

            def chunks(index: int, generated: list[GeneratedToken] | None) -> list[Chunk]:
                if generated is None:
                    reason = finish_reason(group.completions[index])
                    return [
                        response([CompletionChoice(index=index, text="", finish_reason=reason)])
                    ]
                text = "".join(t.text for t in generated)
                logprobs = (
                    completion_logprobs(generated, offsets.get(index, 0)) if with_logprobs else None
                )
                offsets[index] = offsets.get(index, 0) + len(text)
                return [response([CompletionChoice(index=index, text=text, logprobs=logprobs)])]

            return _stream(group, chunks, lambda usage: response([], usage), _include_usage(body))

        tokens = await _collect(group, request)
        if tokens is None:
            return Response(status_code=499)  # the client closed the connection
        choices = [
            CompletionChoice(
                index=i,
                text="".join(t.text for t in tokens.get(i, [])),
                logprobs=completion_logprobs(tokens.get(i, []), 0) if with_logprobs else None,
                finish_reason=finish_reason(group.completions[i]),
            )
            for i in range(len(group.completions))
        ]
        usage = usage_of(group)
        return _json(response(choices, usage), group, usage)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, key: Principal = caller
    ) -> Response:
        if body.model in named_models:
            raise InvalidInput(f"{body.model} is served on /v1/completions", field="model")
        if body.messages[-1].role != "user":
            raise InvalidInput(
                "the last message must come from the user",
                field=f"messages[{len(body.messages) - 1}].role",
            )
        if body.top_logprobs and not body.logprobs:
            raise InvalidInput("top_logprobs needs logprobs: true", field="top_logprobs")
        # The shipped models know no chat template: the prompt is the messages' text in order
        # (a system message holding a capsule's telemetry, the user's question after it).
        prompt = "".join(message.text() for message in body.messages)
        top = (body.top_logprobs or 0) if body.logprobs else 0
        group = _start(service, body, [prompt], "messages", body.token_limit(), top, key.capsule_id)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"

        def chunk(
            choices: list[ChatChunkChoice], usage: Usage | None = None
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=completion_id, model=body.model, choices=choices, usage=usage
            )

        if body.stream:
            started: set[int] = set()

            def chunks(index: int, generated: list[GeneratedToken] | None) -> list[Chunk]:
                out: list[Chunk] = []
                if index not in started:  # the API opens each choice with the role
                    started.add(index)
                    out.append(
                        chunk(
                            [
                                ChatChunkChoice(
                                    index=index, delta=ChatDelta(role="assistant", content="")
                                )
                            ]
                        )
                    )
                if generated is None:
                    reason = finish_reason(group.completions[index])
                    out.append(
                        chunk(
                            [ChatChunkChoice(index=index, delta=ChatDelta(), finish_reason=reason)]
                        )
                    )
                else:
                    delta = ChatDelta(content="".join(t.text for t in generated))
                    logprobs = chat_logprobs(generated) if body.logprobs else None
                    out.append(
                        chunk([ChatChunkChoice(index=index, delta=delta, logprobs=logprobs)])
                    )
                return out

            return _stream(group, chunks, lambda usage: chunk([], usage), _include_usage(body))

        tokens = await _collect(group, request)
        if tokens is None:
            return Response(status_code=499)
        choices = [
            ChatChoice(
                index=i,
                message=AssistantMessage(content="".join(t.text for t in tokens.get(i, []))),
                logprobs=chat_logprobs(tokens.get(i, [])) if body.logprobs else None,
                finish_reason=finish_reason(group.completions[i]),
            )
            for i in range(len(group.completions))
        ]
        usage = usage_of(group)
        response = ChatCompletionResponse(
            id=completion_id, model=body.model, choices=choices, usage=usage
        )
        return _json(response, group, usage)

    return router


def create_app(
    service: CognitiveService | None = None, *, auth: Authenticator | None = None, **build: Any
) -> FastAPI:
    """The OpenAI-compatible API over `service` (default: the shipped tiers, built with
    `build` passed to `factory.build_service`). The main server mounts its router at the
    root. `auth` checks the keys (default: the key store of the control database)."""
    if auth is None:
        from trifecta.fleet.keys import KeyStore

        auth = KeyStore()
    if service is None:
        from trifecta.cognitive.serving.factory import build_service

        service = build_service(**build)
    owned = service

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        owned.close()

    app = FastAPI(
        title="Trifecta cognitive layer (OpenAI-compatible)", version="1", lifespan=lifespan
    )
    install_error_handlers(app, max_body_bytes=MAX_BODY_BYTES)
    app.include_router(build_router(service, auth=auth))
    app.state.cognitive_service = service
    return app
