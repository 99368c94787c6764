"""The serving layer behind the HTTP API: served models, admission, and running requests.

`CognitiveService` knows the tiers it serves (each a `TierPool` with its price), resolves the
capsule of a request and enforces its quota, and starts request groups (the `n` choices of
one API call, or the prompts of a batch) whose events an asyncio handler consumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.cost import RequestCost, TierRate
from trifecta.cognitive.serving.pool import TierPool
from trifecta.cognitive.serving.quota import QuotaGate
from trifecta.cognitive.serving.requests import (
    AsyncStreamSink,
    Completion,
    EngineRequest,
    GeneratedToken,
    SamplingParams,
    StreamEvent,
)
from trifecta.cognitive.serving.tenants import Tenant, TenantDirectory
from trifecta.cognitive.tiers import AUTO_MODEL
from trifecta.core.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from trifecta.cognitive.serving.auto import AutoModel


@dataclass
class ServedTier:
    """A model name clients ask for, and what serves and prices it."""

    name: str
    pool: TierPool
    rate: TierRate

    @property
    def codec(self) -> TokenCodec:
        return self.pool.codec

    @property
    def context_length(self) -> int:
        return self.pool.context_length

    def encode(
        self, prompt: str, *, field: str, max_new_tokens: int | None
    ) -> tuple[list[int], int]:
        """The prompt's token ids and the tokens to generate (None: all the room left),
        refusing prompts that leave no room for them."""
        if not prompt:
            raise InvalidInput("must not be empty", field=field)
        ids = self.codec.encode(prompt, field=field)
        room = self.context_length - len(ids)
        if room < 1 or (max_new_tokens is not None and max_new_tokens > room):
            raise InvalidInput(
                f"this model's maximum context length is {self.context_length} tokens; the prompt "
                f"has {len(ids)} and {max_new_tokens or 1} more were requested",
                field="max_tokens" if room >= 1 else field,
            )
        return ids, max_new_tokens if max_new_tokens is not None else room


class RequestGroup:
    """Requests started together for one API call; their events arrive on one queue."""

    def __init__(
        self, served: ServedTier, tenant: Tenant, items: Sequence[tuple[list[int], SamplingParams]]
    ):
        self.served = served
        self.tenant = tenant
        self.queue: asyncio.Queue[tuple[int, StreamEvent]] = asyncio.Queue()
        self.requests = [
            EngineRequest(ids, params, AsyncStreamSink(self.queue, index), capsule=tenant.id)
            for index, (ids, params) in enumerate(items)
        ]
        self.completions: dict[int, Completion] = {}
        submitted = []
        try:
            for request in self.requests:
                served.pool.submit(request, share=tenant.share)
                submitted.append(request)
        except BaseException:
            for request in submitted:
                served.pool.cancel(request.request_id)
            raise

    @property
    def label(self) -> str:
        return self.served.name

    @property
    def done(self) -> bool:
        return len(self.completions) == len(self.requests)

    async def events(
        self, poll_s: float | None = None
    ) -> AsyncIterator[tuple[int, list[GeneratedToken] | None]]:
        """`(index, tokens)` as they come; `(index, None)` when request `index` has finished
        (its `Completion` is then in `completions`). With `poll_s`, also yields `(-1, None)`
        every `poll_s` seconds without events, so the caller can check on its client."""
        while not self.done:
            try:
                index, event = (
                    await asyncio.wait_for(self.queue.get(), poll_s)
                    if poll_s
                    else await self.queue.get()
                )
            except TimeoutError:
                yield -1, None
                continue
            if isinstance(event, BaseException):
                self.cancel()
                raise event
            if isinstance(event, Completion):
                self.completions[index] = event
                yield index, None
            else:
                yield index, event

    def cancel(self) -> None:
        """Free the batch slots (or queue places) of every request still running."""
        for index, request in enumerate(self.requests):
            if index not in self.completions:
                self.served.pool.cancel(request.request_id)

    def cost(self) -> RequestCost:
        total: RequestCost | None = None
        for completion in self.completions.values():
            one = self.served.rate.cost(
                completion.prompt_tokens,
                completion.completion_tokens,
                completion.cached_prompt_tokens,
            )
            total = one if total is None else total.merge(one)
        return total if total is not None else self.served.rate.cost(0, 0)


class CognitiveService:
    """The tiers served (and `auto` over them), who may use them, and how fast."""

    def __init__(
        self,
        tiers: Sequence[ServedTier],
        *,
        tenants: TenantDirectory | None = None,
        quotas: QuotaGate | None = None,
        auto: AutoModel | None = None,
    ):
        self.tiers = {tier.name: tier for tier in tiers}
        self.tenants = tenants or TenantDirectory()
        self.quotas = quotas or QuotaGate()
        self.auto = auto

    def model_names(self) -> list[str]:
        return [*self.tiers, *([AUTO_MODEL] if self.auto is not None else [])]

    def served(self, model: str) -> ServedTier:
        """The tier a model name stands for (for `auto`: the first tier, which checks prompts)."""
        if model == AUTO_MODEL and self.auto is not None:
            return self.auto.first
        try:
            return self.tiers[model]
        except KeyError:
            raise NotFound(
                f"the model {model!r} does not exist", field="model", allowed=self.model_names()
            ) from None

    def admit(self, capsule_id: str | None) -> Tenant:
        """The request's tenant, once its capsule is known and within its quota."""
        tenant = self.tenants.resolve(capsule_id)
        self.quotas.admit(tenant.id, tenant.quota_rps)
        return tenant

    def start(
        self, served: ServedTier, tenant: Tenant, items: Sequence[tuple[list[int], SamplingParams]]
    ) -> RequestGroup:
        return RequestGroup(served, tenant, items)

    def close(self) -> None:
        for tier in self.tiers.values():
            tier.pool.close()
