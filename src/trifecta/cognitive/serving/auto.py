"""`auto`: the escalation cascade (part 1, `cognitive.cascade`) over this server's tiers.

Each rung of the cascade is a served tier seen as a `Backend` for one capsule, so an escalated
request waits in the capsule's fair queue and decodes in the tier's continuous batch like any
other. The cascade's stop rule (hand the request on when the entropy signal crosses the tier's
threshold) cancels the request in its batch at once, freeing the slot; the tokens kept are
those up to the crossing, as the in-process backend keeps them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from trifecta.cognitive.backends.base import STOPPED_BY_RULE, Backend, SamplingOptions, StopRule
from trifecta.cognitive.cascade import CascadeGeneration, DecisionHook, Thresholds, cascade_of
from trifecta.cognitive.cost import all_tier_costs
from trifecta.cognitive.serving.cost import RequestCost
from trifecta.cognitive.serving.requests import (
    CollectingSink,
    Completion,
    EngineRequest,
    FinishReason,
    GeneratedToken,
    SamplingParams,
)
from trifecta.cognitive.serving.service import ServedTier
from trifecta.cognitive.serving.tenants import ANONYMOUS, Tenant
from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.core.protocols import Generation

# How often a rung's waiting thread wakes to see whether its client went away (the longest a
# cancelled request keeps its slot). Each wake is a switch into a thread that finds nothing
# to do: at 50 ms a cognitive request under the loop's load (~180 ms a rung) woke 3-4 times.
WAIT_POLL_S = 0.25


class ClientGone(Unavailable):
    """The client of an `auto` request went away; its requests were cancelled."""


class _Watched(CollectingSink):
    """Collects a rung's tokens and applies the cascade's stop rule as they arrive."""

    def __init__(self, index: int, rule: StopRule | None, on_stop: Callable[[], None]):
        super().__init__()
        self.index, self.rule, self.on_stop = index, rule, on_stop
        self.stopped_at: int | None = None
        # The rule's inputs so far, grown a token at a time (not rebuilt from every token
        # generated at each step, on the replica's decoding thread).
        self._entropies: list[float] = []
        self._texts: list[str] = []

    def tokens(self, generated: Sequence[GeneratedToken]) -> None:
        super().tokens(generated)
        if self.rule is None or self.stopped_at is not None:
            return
        for token in generated:
            self._entropies.append(token.entropy)
            self._texts.append(token.text)
            if self.rule(self.index, self._entropies, self._texts):
                self.stopped_at = len(self._entropies)
                self.on_stop()
                return


class TierRung(Backend):
    """One served tier as a cascade rung, on behalf of one capsule."""

    def __init__(
        self,
        served: ServedTier,
        tenant: Tenant,
        *,
        cancelled: threading.Event,
        top_p: float = 1.0,
        seed: int | None = None,
    ):
        super().__init__(served.name)
        self.served, self.tenant, self.cancelled = served, tenant, cancelled
        self.top_p, self.seed = top_p, seed
        self.completions: list[Completion] = []  # every request this rung ran (for the cost)

    @property
    def supports_stop_rule(self) -> bool:
        return True

    def _generate(
        self, prompts: list[str], options: SamplingOptions, stop_rule: StopRule | None
    ) -> list[Generation]:
        pool = self.served.pool
        params = SamplingParams(
            options.max_new_tokens,
            options.temperature,
            self.top_p,
            options.top_logprobs,
            options.stop,
            self.seed,
        )
        requests, sinks = [], []
        for index, prompt in enumerate(prompts):
            request = EngineRequest(
                pool.codec.encode(prompt), params, CollectingSink(), capsule=self.tenant.id
            )
            request.sink = sink = _Watched(
                index, stop_rule, partial(pool.cancel, request.request_id)
            )
            requests.append(request)
            sinks.append(sink)
        for request in requests:
            pool.submit(request, share=self.tenant.share)
        results = []
        for sink in sinks:
            while not sink.finished(WAIT_POLL_S):
                if self.cancelled.is_set():
                    for request in requests:
                        pool.cancel(request.request_id)
                    raise ClientGone("the client went away")
            generated, completion = sink.wait()
            self.completions.append(completion)
            results.append(self._generation(generated, completion, sink.stopped_at))
        return results

    def _generation(
        self, generated: list[GeneratedToken], completion: Completion, stopped_at: int | None
    ) -> Generation:
        kept = generated[:stopped_at] if stopped_at is not None else generated
        finish = (
            STOPPED_BY_RULE
            if stopped_at is not None
            else ("length" if completion.finish_reason == "length" else "stop")
        )
        return Generation(
            text="".join(t.text for t in kept),
            tokens=[t.text for t in kept],
            logprobs=[t.logprob for t in kept],
            entropies=[t.entropy for t in kept],
            finish_reason=finish,
            model=self.name,
            prompt_tokens=completion.prompt_tokens,
            top_logprobs=[list(t.top) for t in kept],
        )


@dataclass(frozen=True)
class AutoResult:
    generation: CascadeGeneration
    cost: RequestCost

    def tokens(self) -> list[GeneratedToken]:
        """The answer's tokens in the form the API formats (ids are not carried by a cascade)."""
        g = self.generation
        tops = g.top_logprobs or [[] for _ in g.tokens]
        return [
            GeneratedToken(-1, text, logprob, entropy, tuple(top), text)
            for text, logprob, entropy, top in zip(
                g.tokens, g.logprobs, g.entropies, tops, strict=True
            )
        ]


class AutoModel:
    """The `auto` model: the cascade over the served tiers, smallest first."""

    def __init__(
        self,
        tiers: Sequence[ServedTier],
        *,
        thresholds: Callable[[str | None], Thresholds],
        hook: Callable[[str], DecisionHook | None] | None = None,
        reuse_prefix: bool = False,
    ):
        self.tiers = list(tiers)
        self.thresholds = thresholds
        self.hook = hook
        self.reuse_prefix = reuse_prefix

    @property
    def first(self) -> ServedTier:
        return self.tiers[0]

    def generate(
        self,
        tenant: Tenant,
        prompts: list[str],
        options: SamplingOptions,
        *,
        cancelled: threading.Event,
        top_p: float = 1.0,
        seed: int | None = None,
        start_tier: str | None = None,
    ) -> list[AutoResult]:
        """Run the cascade for `tenant` (blocking: call it from a worker thread). Each request
        starts where the shipped router puts it, never below `start_tier` (a routing rule
        learnt from outcomes: the tiers under it mostly hand such requests on)."""
        names = [t.name for t in self.tiers]
        if start_tier is not None and start_tier not in names:
            raise InvalidInput(f"unknown tier {start_tier!r}", field="start_tier", allowed=names)
        first = 0 if start_tier is None else names.index(start_tier)
        rungs = [
            TierRung(t, tenant, cancelled=cancelled, top_p=top_p, seed=seed) for t in self.tiers
        ]
        capsule = tenant.id if tenant is not ANONYMOUS else None
        cascade = cascade_of(
            rungs,
            all_tier_costs(),
            self.thresholds(capsule),
            reuse_prefix=self.reuse_prefix,
            on_decision=self.hook(capsule)
            if self.hook is not None and capsule is not None
            else None,
            floor=first,
        )
        outputs = cascade.generate(
            prompts,
            max_new_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_logprobs=options.top_logprobs,
            stop=options.stop,
        )
        rates = {t.name: t.rate for t in self.tiers}
        results = []
        for output in outputs:
            assert isinstance(output, CascadeGeneration)
            cost: RequestCost | None = None
            for decision in output.decisions:
                one = rates[decision.tier].cost(decision.prompt_tokens, decision.completion_tokens)
                cost = one if cost is None else cost.merge(one)
            assert cost is not None
            results.append(AutoResult(output, cost))
        return results


class AutoGroup:
    """An `auto` API call in the shape the routes consume (`RequestGroup`'s): the cascade runs
    in a worker thread; its answers arrive whole when it settles."""

    label = "auto"

    def __init__(
        self,
        auto: AutoModel,
        tenant: Tenant,
        prompts: list[str],
        options: SamplingOptions,
        *,
        top_p: float,
        seed: int | None,
    ):
        self.cancelled = threading.Event()
        self.requests = prompts
        self.completions: dict[int, Completion] = {}
        self._results: list[AutoResult] = []
        self._task = asyncio.ensure_future(
            asyncio.to_thread(
                auto.generate,
                tenant,
                prompts,
                options,
                cancelled=self.cancelled,
                top_p=top_p,
                seed=seed,
            )
        )

    @property
    def done(self) -> bool:
        return len(self.completions) == len(self.requests)

    async def events(
        self, poll_s: float | None = None
    ) -> AsyncIterator[tuple[int, list[GeneratedToken] | None]]:
        while not self._task.done():
            await asyncio.wait({self._task}, timeout=poll_s)
            if not self._task.done():
                yield -1, None
        self._results = self._task.result()
        for index, result in enumerate(self._results):
            tokens = result.tokens()
            yield index, tokens
            finish: FinishReason = (
                "length" if result.generation.finish_reason == "length" else "stop"
            )
            # The answer's own counts (what usage reports, beside `logprobs.tokens`); the work
            # of every tier visited is in `cost()`.
            self.completions[index] = Completion(
                finish, result.generation.prompt_tokens, len(tokens)
            )
            yield index, None

    def cancel(self) -> None:
        self.cancelled.set()

    def cost(self) -> RequestCost:
        total: RequestCost | None = None
        for result in self._results:
            total = result.cost if total is None else total.merge(result.cost)
        assert total is not None
        return total
