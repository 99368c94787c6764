"""Calibrating the cascade's thresholds on a sample of a capsule's traffic.

Every tier is run once on the whole sample, which gives a table of observations (each tier's
signal score, correctness when a verifier can tell, and tokens for every request). Any choice of
thresholds can then be replayed on that table exactly, since a request ends on the first tier
whose score stays at or below its threshold. Three targets:

- `rate`: each tier but the last hands on at most that share of the requests it sees
  (unlabelled: a quantile of the scores of the requests that reach the tier);
- `cost`: the most accurate thresholds whose compute cost is at most that share of always
  calling the largest tier (labelled; unlabelled samples fall back to one common rate);
- `quality`: the cheapest thresholds whose accuracy is at least that value (labelled; when no
  thresholds reach it, the most accurate ones).

Each fit also records the escalation rate per tier it implies, which online recalibration then
keeps as live traffic drifts (`online.OnlineCalibrator`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from trifecta.cognitive.cascade import Thresholds
from trifecta.cognitive.entropy import DEFAULT_AGGREGATE, DEFAULT_WINDOW, Aggregate
from trifecta.core.errors import InvalidInput

TargetKind = Literal["rate", "cost", "quality"]
TARGET_KINDS: tuple[TargetKind, ...] = ("rate", "cost", "quality")
GRID_QUANTILES = np.linspace(0.0, 1.0, 41)  # candidate thresholds: score quantiles, 2.5% apart
# Signals are entropies or rises of entropy, never negative and far below 1e9 nats, so these
# two finite thresholds (JSON and databases store no infinities) mean "never" and "always".
ALWAYS_KEEP = 1e9
ALWAYS_ESCALATE = -1.0


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: TargetKind
    value: float = Field(gt=0, le=1)


@dataclass(frozen=True)
class Observations:
    """Every tier's outcome on the same requests: arrays of shape [tiers, requests]."""

    tiers: tuple[str, ...]
    scores: NDArray[np.float64]
    tokens: NDArray[np.float64]
    flops_per_token: NDArray[np.float64]  # [tiers]
    correct: NDArray[np.bool_] | None = None

    @property
    def size(self) -> int:
        return int(self.scores.shape[1])

    def subset(self, rows: NDArray[np.int64]) -> Observations:
        return Observations(
            self.tiers,
            self.scores[:, rows],
            self.tokens[:, rows],
            self.flops_per_token,
            None if self.correct is None else self.correct[:, rows],
        )


@dataclass(frozen=True)
class Replay:
    """What a choice of thresholds does on a table of observations."""

    end_tier: NDArray[np.int64]  # [requests] index of the tier that answered
    start_tier: NDArray[np.int64]  # [requests] index of the tier it started on
    accuracy: float | None
    cost_share: float  # compute cost / cost of always calling the largest tier
    reach: tuple[float, ...]  # share of requests each tier sees
    rates: tuple[float, ...]  # share of its requests each tier hands on (all but the last)


def end_tiers(scores: NDArray[np.float64], values: Sequence[float]) -> NDArray[np.int64]:
    """Index of the tier that answers each request under thresholds `values` (one per tier
    but the last): the first tier whose score is at or below its threshold."""
    tiers = scores.shape[0]
    end = np.full(scores.shape[1], tiers - 1, dtype=np.int64)
    for level in range(tiers - 2, -1, -1):
        end = np.where(scores[level] <= values[level], level, end)
    return end


def replay(
    obs: Observations, values: Sequence[float], *, start: NDArray[np.int64] | None = None
) -> Replay:
    """Replay thresholds `values`; `start` optionally gives each request's first tier (a router
    in front of the cascade)."""
    scores = obs.scores
    if start is not None:  # tiers below a request's start never see it
        below = np.arange(len(obs.tiers))[:, None] < start[None, :]
        scores = np.where(below, np.inf, scores)
    return outcome(obs, end_tiers(scores, values), start=start)


def outcome(
    obs: Observations, end: NDArray[np.int64], *, start: NDArray[np.int64] | None = None
) -> Replay:
    """Accuracy and cost when each request runs from its start tier (default: the first) up to
    and including `end`."""
    tiers = len(obs.tiers)
    first = np.zeros(obs.size, dtype=np.int64) if start is None else start
    visited = (np.arange(tiers)[:, None] >= first[None, :]) & (
        np.arange(tiers)[:, None] <= end[None, :]
    )
    flops = float((visited * obs.tokens * obs.flops_per_token[:, None]).sum())
    largest = float((obs.tokens[-1] * obs.flops_per_token[-1]).sum())
    reach = visited.mean(axis=1)
    rates = tuple(
        float((visited[level] & visited[level + 1]).sum() / visited[level].sum())
        if visited[level].any()
        else 0.0
        for level in range(tiers - 1)
    )
    accuracy = None
    if obs.correct is not None:
        accuracy = float(obs.correct[end, np.arange(obs.size)].mean())
    return Replay(
        end, first, accuracy, flops / largest if largest else 0.0, tuple(map(float, reach)), rates
    )


def _candidates(scores: NDArray[np.float64]) -> list[float]:
    values = sorted(set(np.quantile(scores, GRID_QUANTILES).tolist()))
    return [ALWAYS_ESCALATE, *values, ALWAYS_KEEP]


def fit_rate(obs: Observations, rate: float) -> list[float]:
    """Thresholds under which each tier hands on `rate` of the requests reaching it."""
    values: list[float] = []
    reaching = np.ones(obs.size, dtype=bool)
    for level in range(len(obs.tiers) - 1):
        seen = obs.scores[level][reaching]
        value = float(np.quantile(seen, 1.0 - rate)) if seen.size else ALWAYS_KEEP
        values.append(value)
        reaching &= obs.scores[level] > value
    return values


def _grid(obs: Observations) -> list[tuple[float, ...]]:
    lists = [_candidates(obs.scores[level]) for level in range(len(obs.tiers) - 1)]
    return list(itertools.product(*lists))


def fit_cost(obs: Observations, budget: float) -> list[float]:
    """The most accurate thresholds (ties: the cheapest) within `budget` of the largest
    tier's compute cost. Without labels: the highest common rate within the budget."""
    if obs.correct is None:
        best_rate = 0.0
        for rate in np.linspace(0.0, 1.0, 101):
            if replay(obs, fit_rate(obs, float(rate))).cost_share <= budget:
                best_rate = float(rate)
        return fit_rate(obs, best_rate)
    best: tuple[float, float, tuple[float, ...]] | None = None
    for values in _grid(obs):
        outcome = replay(obs, values)
        if outcome.cost_share > budget or outcome.accuracy is None:
            continue
        key = (outcome.accuracy, -outcome.cost_share)
        if best is None or key > best[:2]:
            best = (*key, values)
    if best is None:  # even the smallest tier alone is over budget: never escalate
        return [ALWAYS_KEEP] * (len(obs.tiers) - 1)
    return list(best[2])


def fit_quality(obs: Observations, target: float) -> list[float]:
    """The cheapest thresholds with accuracy at least `target` (else the most accurate)."""
    if obs.correct is None:
        raise InvalidInput("a quality target needs labelled observations", field="target")
    reaching: tuple[float, float, tuple[float, ...]] | None = None
    best: tuple[float, float, tuple[float, ...]] | None = None
    for values in _grid(obs):
        outcome = replay(obs, values)
        assert outcome.accuracy is not None
        if outcome.accuracy >= target and (reaching is None or outcome.cost_share < reaching[1]):
            reaching = (outcome.accuracy, outcome.cost_share, values)
        key = (outcome.accuracy, -outcome.cost_share)
        if best is None or key > best[:2]:
            best = (*key, values)
    chosen = reaching or best
    assert chosen is not None
    return list(chosen[2])


@dataclass(frozen=True)
class Calibration:
    """Fitted thresholds, the rates they imply on the sample, and how they were made."""

    thresholds: Thresholds
    rates: dict[str, float]
    target: Target
    sample_size: int
    accuracy: float | None
    cost_share: float


def calibrate(
    obs: Observations,
    target: Target,
    *,
    aggregate: Aggregate = DEFAULT_AGGREGATE,
    window: int = DEFAULT_WINDOW,
) -> Calibration:
    """Fit thresholds to `target` on `obs` (whose scores were read with `aggregate`)."""
    if len(obs.tiers) < 2:
        raise InvalidInput("calibration needs at least two tiers", field="tiers")
    if obs.size == 0:
        raise InvalidInput("calibration needs a non-empty sample", field="sample")
    if target.kind == "rate":
        values = fit_rate(obs, target.value)
    elif target.kind == "cost":
        values = fit_cost(obs, target.value)
    else:
        values = fit_quality(obs, target.value)
    outcome = replay(obs, values)
    names = obs.tiers[:-1]
    return Calibration(
        thresholds=Thresholds(
            aggregate=aggregate, window=window, values=dict(zip(names, values, strict=True))
        ),
        rates=dict(zip(names, outcome.rates, strict=True)),
        target=target,
        sample_size=obs.size,
        accuracy=outcome.accuracy,
        cost_share=outcome.cost_share,
    )
