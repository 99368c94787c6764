"""The escalation signal: Shannon entropy of the next-token distribution, read step by step.

SwiReasoning (Shi et al., 2025, "SwiReasoning: Switch-Thinking in Latent and Explicit for
Pareto-Superior Reasoning LLMs", arXiv:2510.05069) tracks the entropy of the full, unfiltered
next-token distribution at every step and reads it block-wise: a reference entropy is taken at
the start of a block and each later step is compared with it. Confidence falling (entropy rising
above the reference) is what triggers its switch; confidence rising (entropy below the reference)
closes the block and the new, lower entropy becomes the next block's reference. We read the same
trend as an escalation signal: the signal at a step is its entropy's rise over the block
reference, and a tier hands the request on when that rise crosses the tier's threshold.

The tiers write worked answers (`104=87`: the intermediate result, then the answer; see
`scratchpad.py`), so the reasoning has steps. `step` reads the entropy block-wise with the
reasoning step as the block: the signal at a token is the mean entropy of its step so far, and
a new block starts after each step separator. A hesitant step therefore raises the signal
however confident the steps before it were, and with `reuse_prefix` the next tier keeps the
finished steps and redoes only the unsure one.

Beside these we offer the mean and the max of the entropy over a sliding window;
`benchmarks/escalation.py` measures how well each aggregate predicts a wrong answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from trifecta.cognitive.scratchpad import STEP
from trifecta.core.errors import InvalidInput

Aggregate = Literal["step", "block", "mean", "max"]
AGGREGATES: tuple[Aggregate, ...] = ("step", "block", "mean", "max")
# The tiers reason in steps, so the cascade reads the entropy step by step; benchmarks/
# escalation.py measures every aggregate's failure-prediction AUROC on held-out tasks
# (docs/cognitive.md gives the figures for every aggregate and tier).
DEFAULT_AGGREGATE: Aggregate = "step"
DEFAULT_WINDOW = 4


def entropy_from_logits(logits: ArrayLike) -> NDArray[np.float64]:
    """Exact Shannon entropy (nats) of softmax(logits) along the last axis."""
    values = np.asarray(logits, dtype=np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    log_p = shifted - log_z
    p = np.exp(log_p)
    # 0 * log 0 is 0: mask the -inf log-probabilities of tokens the model rules out.
    terms = p * np.where(p > 0, log_p, 0.0)
    result: NDArray[np.float64] = -terms.sum(axis=-1)
    return result


def entropy_from_top_logprobs(logprobs: Sequence[float]) -> float:
    """Estimate the entropy of a distribution from its `k` most likely log-probabilities (what
    an OpenAI-compatible endpoint returns as `top_logprobs`).

    The listed tokens contribute exactly. The unlisted mass `r = 1 - sum(p)` sits on tokens no
    more likely than the least likely listed one, `p_min`, so it contributes at least
    `r * -log(p_min)`; we take that bound. The estimate is therefore never above the exact
    entropy; its measured bias on the shipped tiers is in docs/cognitive.md."""
    if not logprobs:
        raise InvalidInput("need at least one log-probability", field="top_logprobs")
    probs = [math.exp(lp) for lp in logprobs if math.isfinite(lp)]
    if not probs:
        return 0.0
    listed = -sum(p * math.log(p) for p in probs if p > 0)
    residual = max(0.0, 1.0 - sum(probs))
    p_min = min(probs)
    tail = residual * -math.log(p_min) if residual > 0 and p_min > 0 else 0.0
    return listed + tail


@dataclass(frozen=True)
class Crossing:
    """Where a signal crossed its threshold: the step, the value there, and the first step of
    the block or window it belonged to (tokens before it are the accepted prefix)."""

    step: int
    value: float
    block_start: int


class SignalReader:
    """Reads one generation's entropies step by step and reports the signal at each step.

    `step`: mean entropy of the current reasoning step so far (steps end at a `STEP` token).
    `block`: rise of the step's entropy over the reference taken at the block's start; a step
    below the reference starts a new block with itself as the reference (SwiReasoning).
    `mean` / `max`: the mean / max entropy over the last `window` steps."""

    def __init__(self, aggregate: Aggregate = DEFAULT_AGGREGATE, window: int = DEFAULT_WINDOW):
        if aggregate not in AGGREGATES:
            raise InvalidInput(
                f"unknown aggregate {aggregate!r}", field="aggregate", allowed=AGGREGATES
            )
        if window < 1:
            raise InvalidInput("window must be at least 1", field="window")
        self.aggregate = aggregate
        self.window = window
        self.entropies: list[float] = []
        self._reference = 0.0
        self._block_start = 0
        self._step_total = 0.0
        self._step_ended = False

    def push(self, entropy: float, token: str | None = None) -> float:
        """Add the next step's entropy (and its token, which `step` needs to find the
        reasoning steps); return the signal at that step."""
        step = len(self.entropies)
        self.entropies.append(float(entropy))
        if self.aggregate == "step":
            if self._step_ended:
                self._block_start, self._step_total, self._step_ended = step, 0.0, False
            self._step_total += float(entropy)
            # The separator closes its step: its entropy (go on, or stop?) belongs to it.
            self._step_ended = token == STEP
            return self._step_total / (step - self._block_start + 1)
        if self.aggregate == "block":
            if step == 0:
                # The first step has no earlier reference: its rise is over a fully confident
                # (zero-entropy) start, so an unsure first token can trigger on its own.
                self._reference, self._block_start = float(entropy), 0
                return float(entropy)
            if entropy < self._reference:  # confidence rising: a new block starts here
                self._reference, self._block_start = float(entropy), step
            return float(entropy) - self._reference
        recent = self.entropies[-self.window :]
        return float(np.mean(recent)) if self.aggregate == "mean" else float(max(recent))

    def block_start(self) -> int:
        """First step of the block (or window) the latest step belongs to."""
        if self.aggregate in ("block", "step"):
            return self._block_start
        return max(0, len(self.entropies) - self.window)


def _tokens(entropies: Sequence[float], tokens: Sequence[str] | None) -> Sequence[str | None]:
    return tokens if tokens is not None else [None] * len(entropies)


def signal_trace(
    entropies: Sequence[float],
    aggregate: Aggregate = DEFAULT_AGGREGATE,
    window: int = DEFAULT_WINDOW,
    tokens: Sequence[str] | None = None,
) -> list[float]:
    """The signal at every step of a finished generation (`tokens`: its tokens, for `step`)."""
    reader = SignalReader(aggregate, window)
    return [reader.push(h, t) for h, t in zip(entropies, _tokens(entropies, tokens), strict=False)]


def signal_score(
    entropies: Sequence[float],
    aggregate: Aggregate = DEFAULT_AGGREGATE,
    window: int = DEFAULT_WINDOW,
    tokens: Sequence[str] | None = None,
) -> float:
    """The highest signal over a finished generation: it crosses a threshold `t` exactly when
    this score exceeds `t`, so calibration works on one number per request."""
    trace = signal_trace(entropies, aggregate, window, tokens)
    return max(trace) if trace else 0.0


def first_crossing(
    entropies: Sequence[float],
    threshold: float,
    aggregate: Aggregate = DEFAULT_AGGREGATE,
    window: int = DEFAULT_WINDOW,
    tokens: Sequence[str] | None = None,
) -> Crossing | None:
    """The first step whose signal exceeds `threshold`, or None."""
    reader = SignalReader(aggregate, window)
    for step, (entropy, token) in enumerate(
        zip(entropies, _tokens(entropies, tokens), strict=False)
    ):
        value = reader.push(entropy, token)
        if value > threshold:
            return Crossing(step=step, value=value, block_start=reader.block_start())
    return None
