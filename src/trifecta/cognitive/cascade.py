"""The escalation cascade: a `LanguageModel` (model name `auto`) over any number of tiers.

Every request starts on the smallest tier. While it decodes, the entropy signal
(`entropy.SignalReader`) is read step by step; when it crosses that tier's threshold the tier
stops at once and the request moves on to the next tier with the same prompt (and, with
`reuse_prefix`, the tokens generated before the block in which confidence fell). The last tier
always answers. Each hand-over decision is logged with its signal and returned on the
`CascadeGeneration`, with the tokens and the cost every tier spent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, ConfigDict, Field

from trifecta.cognitive.backends.base import Backend, SamplingOptions, StopRule
from trifecta.cognitive.cost import TierCost
from trifecta.cognitive.entropy import (
    DEFAULT_AGGREGATE,
    DEFAULT_WINDOW,
    Aggregate,
    Crossing,
    SignalReader,
    first_crossing,
    signal_score,
)
from trifecta.cognitive.tiers import AUTO_MODEL
from trifecta.core.errors import InvalidInput
from trifecta.core.logging import get_logger
from trifecta.core.protocols import Generation

log = get_logger(__name__)


class Thresholds(BaseModel):
    """Where each tier but the last hands a request on: signal above `values[tier]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregate: Aggregate = DEFAULT_AGGREGATE
    window: int = Field(default=DEFAULT_WINDOW, ge=1)
    values: dict[str, float] = Field(default_factory=dict, description="tier -> threshold")
    router: dict[str, float] = Field(
        default_factory=dict,
        description="tier -> the predicted success (start_router.py) a request needs to start "
        "on that tier; empty: every request starts on the first tier",
    )

    def for_tier(self, tier: str) -> float:
        try:
            return self.values[tier]
        except KeyError:
            raise InvalidInput(
                f"no threshold for tier {tier!r}", field="thresholds", allowed=self.values
            ) from None


@dataclass(frozen=True)
class CascadeTier:
    """One rung: the backend that answers, and what its tokens cost."""

    backend: Backend
    cost: TierCost

    @property
    def name(self) -> str:
        return self.backend.name


@dataclass(frozen=True)
class Decision:
    """What one tier did with one request."""

    tier: str
    signal: float  # the peak signal this tier read (at the crossing, when it escalated)
    threshold: float | None  # None on the last tier, which always answers
    escalated: bool
    step: int | None  # the step at which the signal crossed
    prompt_tokens: int
    completion_tokens: int
    flops: float
    usd: float


@dataclass(frozen=True)
class CascadeGeneration(Generation):
    """A `Generation` plus the path it took through the tiers."""

    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    @property
    def path(self) -> list[str]:
        return [d.tier for d in self.decisions]

    @property
    def flops(self) -> float:
        return sum(d.flops for d in self.decisions)

    @property
    def usd(self) -> float:
        return sum(d.usd for d in self.decisions)


DecisionHook = Callable[[str, Decision], None]  # (prompt, decision): online recalibration
# prompts -> index of the tier each starts on (a router deciding before generation).
StartRule = Callable[[Sequence[str]], Sequence[int]]


class EscalationCascade(Backend):
    """Smallest tier first; escalate on the entropy signal; the last tier always answers."""

    def __init__(
        self,
        tiers: Sequence[CascadeTier],
        thresholds: Thresholds,
        *,
        name: str = AUTO_MODEL,
        reuse_prefix: bool = False,
        on_decision: DecisionHook | None = None,
        start: StartRule | None = None,
        floor: int = 0,
    ):
        if not tiers:
            raise InvalidInput("a cascade needs at least one tier", field="tiers")
        for tier in tiers[:-1]:
            thresholds.for_tier(tier.name)
        super().__init__(name, cost_per_token=None)
        self.tiers = list(tiers)
        self.thresholds = thresholds
        self.reuse_prefix = reuse_prefix
        self.on_decision = on_decision
        self.start = start
        # The lowest tier any request starts on (a routing rule learnt from outcomes: `auto`'s
        # `start_tier`); the router or `start` may still start a request higher.
        self.floor = min(max(floor, 0), len(self.tiers) - 1)

    def with_thresholds(
        self, thresholds: Thresholds, on_decision: DecisionHook | None = None
    ) -> EscalationCascade:
        """The same tiers (shared, not reloaded) with other thresholds: one capsule's view."""
        return EscalationCascade(
            self.tiers,
            thresholds,
            name=self.name,
            reuse_prefix=self.reuse_prefix,
            on_decision=on_decision if on_decision is not None else self.on_decision,
            start=self.start,
            floor=self.floor,
        )

    @property
    def supports_stop_rule(self) -> bool:
        return False

    def _generate(
        self, prompts: list[str], options: SamplingOptions, stop_rule: StopRule | None
    ) -> list[Generation]:
        finals: dict[int, CascadeGeneration] = {}
        decisions: dict[int, list[Decision]] = {i: [] for i in range(len(prompts))}
        prefixes: dict[int, Generation | None] = dict.fromkeys(range(len(prompts)))
        starts = self._starts(prompts)
        pending: list[int] = []
        for level, tier in enumerate(self.tiers):
            pending = sorted(pending + [i for i, s in enumerate(starts) if s == level])
            if not pending:
                continue
            last = level == len(self.tiers) - 1
            threshold = None if last else self.thresholds.for_tier(tier.name)
            outputs = self._run_tier(tier, pending, prompts, prefixes, options, threshold)
            still: list[int] = []
            for index, output in zip(pending, outputs, strict=True):
                crossing = self._crossing(output, threshold)
                decision = self._decide(tier, output, threshold, crossing)
                decisions[index].append(decision)
                log.debug("escalation decision", prompt=prompts[index], **decision.__dict__)
                if self.on_decision is not None:
                    self.on_decision(prompts[index], decision)
                if crossing is not None:
                    accepted = _truncate(output, crossing.block_start if self.reuse_prefix else 0)
                    if accepted is not None:
                        prefixes[index] = _join(prefixes[index], accepted)
                    still.append(index)
                else:
                    merged = _join(prefixes[index], output)
                    finals[index] = CascadeGeneration(
                        **{**merged.__dict__, "model": tier.name},
                        decisions=tuple(decisions[index]),
                    )
            pending = still
        return [finals[i] for i in range(len(prompts))]

    def _starts(self, prompts: list[str]) -> list[int]:
        if self.start is None and self.thresholds.router:
            starts = self._routed(prompts)
        elif self.start is None:
            return [self.floor] * len(prompts)
        else:
            starts = [int(s) for s in self.start(prompts)]
        if len(starts) != len(prompts) or any(not 0 <= s < len(self.tiers) for s in starts):
            raise InvalidInput(
                "the start rule returned no valid tier for some prompt", field="start"
            )
        return [max(s, self.floor) for s in starts]

    def _routed(self, prompts: list[str]) -> list[int]:
        """Start tiers from the shipped router under the thresholds' cut-offs. A cascade over
        other tiers than the router's (a server running a subset of them), or with no router
        shipped, starts every request on its first tier, as a cascade without cut-offs does."""
        from trifecta.cognitive.start_router import shipped_router

        router = shipped_router()
        if router is None or router.tiers != tuple(t.name for t in self.tiers):
            log.warning(
                "no start router for these tiers: every request starts on the first",
                tiers=[t.name for t in self.tiers],
            )
            return [0] * len(prompts)
        return router.starts(prompts, self.thresholds.router)

    def _run_tier(
        self,
        tier: CascadeTier,
        pending: list[int],
        prompts: list[str],
        prefixes: Mapping[int, Generation | None],
        options: SamplingOptions,
        threshold: float | None,
    ) -> list[Generation]:
        """Run `tier` on the pending requests; requests carrying an accepted prefix have fewer
        tokens left, so they go in groups of equal remaining budget."""
        groups: dict[int, list[int]] = {}
        for index in pending:
            groups.setdefault(max(1, options.max_new_tokens - _length(prefixes[index])), []).append(
                index
            )
        results: dict[int, Generation] = {}
        for budget, members in groups.items():
            outputs = tier.backend.generate(
                [self._continued(prompts[i], prefixes[i]) for i in members],
                max_new_tokens=budget,
                temperature=options.temperature,
                top_logprobs=options.top_logprobs,
                stop=options.stop,
                stop_rule=self._stop_rule(threshold) if threshold is not None else None,
            )
            results.update(zip(members, outputs, strict=True))
        return [results[i] for i in pending]

    def _stop_rule(self, threshold: float) -> StopRule:
        """Stop a sequence at the step its signal crosses `threshold`."""
        readers: dict[int, SignalReader] = {}

        def crossed(index: int, entropies: Sequence[float], tokens: Sequence[str]) -> bool:
            reader = readers.get(index)
            if reader is None:  # not `setdefault`: that would build a reader every token
                reader = readers[index] = SignalReader(
                    self.thresholds.aggregate, self.thresholds.window
                )
            value = 0.0
            seen = len(reader.entropies)
            for entropy, token in zip(entropies[seen:], tokens[seen:], strict=False):
                value = reader.push(entropy, token)
            return value > threshold

        return crossed

    def _crossing(self, output: Generation, threshold: float | None) -> Crossing | None:
        if threshold is None:
            return None
        return first_crossing(
            output.entropies,
            threshold,
            self.thresholds.aggregate,
            self.thresholds.window,
            output.tokens,
        )

    def _decide(
        self,
        tier: CascadeTier,
        output: Generation,
        threshold: float | None,
        crossing: Crossing | None,
    ) -> Decision:
        tokens = output.prompt_tokens + output.completion_tokens
        signal = (
            crossing.value
            if crossing is not None
            else signal_score(
                output.entropies,
                self.thresholds.aggregate,
                self.thresholds.window,
                output.tokens,
            )
        )
        return Decision(
            tier=tier.name,
            signal=signal,
            threshold=threshold,
            escalated=crossing is not None,
            step=crossing.step if crossing is not None else None,
            prompt_tokens=output.prompt_tokens,
            completion_tokens=output.completion_tokens,
            flops=tier.cost.flops(tokens),
            usd=tier.cost.usd(tokens),
        )

    @staticmethod
    def _continued(prompt: str, prefix: Generation | None) -> str:
        return prompt + prefix.text if prefix is not None else prompt


def _length(generation: Generation | None) -> int:
    return generation.completion_tokens if generation is not None else 0


def _truncate(output: Generation, keep: int) -> Generation | None:
    """The first `keep` tokens of `output` (None when nothing is kept)."""
    if keep <= 0:
        return None
    return replace(
        output,
        text="".join(output.tokens[:keep]),
        tokens=output.tokens[:keep],
        logprobs=output.logprobs[:keep],
        entropies=output.entropies[:keep],
        top_logprobs=output.top_logprobs[:keep],
    )


def _join(prefix: Generation | None, rest: Generation) -> Generation:
    """`rest` continued from an accepted `prefix` of an earlier tier (its tokens kept first)."""
    if prefix is None:
        return rest
    return replace(
        rest,
        text=prefix.text + rest.text,
        tokens=prefix.tokens + rest.tokens,
        logprobs=prefix.logprobs + rest.logprobs,
        entropies=prefix.entropies + rest.entropies,
        top_logprobs=prefix.top_logprobs + rest.top_logprobs,
        prompt_tokens=rest.prompt_tokens - prefix.completion_tokens,
    )


def cascade_of(
    backends: Sequence[Backend],
    costs: Mapping[str, TierCost],
    thresholds: Thresholds,
    **options: object,
) -> EscalationCascade:
    """A cascade over `backends` (smallest first), each priced by `costs[backend.name]`."""
    missing = [b.name for b in backends if b.name not in costs]
    if missing:
        raise InvalidInput(f"no cost for {', '.join(missing)}", field="tiers", allowed=costs)
    tiers = [CascadeTier(b, costs[b.name]) for b in backends]
    return EscalationCascade(tiers, thresholds, **options)  # type: ignore[arg-type]
