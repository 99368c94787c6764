"""Calibrating the cascade's thresholds on a sample of a capsule's traffic.

Every tier is run once on the whole sample, which gives a table of observations (each tier's
signal score, correctness when a verifier can tell, and tokens for every request). Any choice of
thresholds can then be replayed on that table exactly, since a request ends on the first tier
whose score stays at or below its threshold. Four targets:

- `rate`: each tier but the last hands on at most that share of the requests it sees
  (unlabelled: a quantile of the scores of the requests that reach the tier);
- `cost`: the most accurate thresholds whose compute stays within that share of always calling
  the largest tier with a margin: the upper end of a bootstrap 95% interval of their compute
  share, over redraws of the sample, is at most the budget (labelled; unlabelled samples fall
  back to the highest common rate within the budget by the same bound). This is the product's
  default (`service.DEFAULT_TARGET`, 40%): the operator states a budget, and the calibration
  spends it on accuracy, with the margin that lets the budget hold on traffic it was not
  fitted on;
- `quality`: the cheapest thresholds whose accuracy is at least that value (labelled; when no
  thresholds reach it, the most accurate ones);
- `keep`: the cheapest thresholds that keep at least that share of the largest tier's accuracy
  with a margin: the lower end of a bootstrap 95% interval of their accuracy relative to the
  largest tier's clears the share (labelled; when none does, the most accurate ones).

With a start router's predictions for the sample (`probabilities`), the `cost` and `keep`
targets fit the router's cut-offs with the thresholds, over every pair on a coarser grid. The
bounds are read by `selection.py`. Each fit also records the escalation rate per tier it
implies, which online recalibration then keeps as live traffic drifts
(`online.OnlineCalibrator`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from trifecta.cognitive import selection
from trifecta.cognitive.cascade import Thresholds
from trifecta.cognitive.entropy import DEFAULT_AGGREGATE, DEFAULT_WINDOW, Aggregate
from trifecta.cognitive.selection import bounds_of, replay_blocks
from trifecta.core.errors import InvalidInput

TargetKind = Literal["rate", "cost", "quality", "keep"]
TARGET_KINDS: tuple[TargetKind, ...] = ("rate", "cost", "quality", "keep")
GRID_QUANTILES = np.linspace(0.0, 1.0, 41)  # candidate thresholds: score quantiles, 2.5% apart
# Signals are entropies or rises of entropy, never negative and far below 1e9 nats, so these
# two finite thresholds (JSON and databases store no infinities) mean "never" and "always".
ALWAYS_KEEP = 1e9
ALWAYS_ESCALATE = -1.0
# The joint fit of router cut-offs and thresholds tries every pair, so each on a coarser grid.
ROUTED_QUANTILES = np.linspace(0.0, 1.0, 11)
ROUTED_KINDS: tuple[TargetKind, ...] = ("cost", "keep")  # targets that fit a start router too


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


def _cascade_blocks(
    obs: Observations, grid: Sequence[Sequence[float]]
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    end = np.stack([end_tiers(obs.scores, values) for values in grid])
    yield np.zeros_like(end), end


def _fit_unlabelled_cost(obs: Observations, budget: float) -> list[float]:
    """The highest common rate whose compute stays within `budget` by its upper bound."""
    rates = np.linspace(0.0, 1.0, 101)
    fits = [fit_rate(obs, float(rate)) for rate in rates]
    bounds = bounds_of(obs, replay_blocks([replay(obs, values) for values in fits]))
    within = np.flatnonzero(bounds.cost_upper <= budget)
    return fits[int(within[-1]) if within.size else 0]


def fit_cost(obs: Observations, budget: float) -> list[float]:
    """The most accurate thresholds whose compute stays within `budget` of the largest tier's
    by its bootstrap upper bound (`selection.most_accurate_within`). Without labels: the
    highest common rate within the budget by the same bound."""
    if obs.correct is None:
        return _fit_unlabelled_cost(obs, budget)
    grid = _grid(obs)
    bounds = bounds_of(obs, _cascade_blocks(obs, grid))
    return list(grid[selection.most_accurate_within(bounds.cost_upper, bounds.accuracy, budget)])


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


def cheapest_keeping(
    obs: Observations, replays: Sequence[Replay], share: float, *, seed: int = 0
) -> int:
    """Index of the cheapest of `replays` (outcomes on `obs`) whose accuracy keeps `share` of
    the largest tier's by its bootstrap lower bound (ties: the more accurate); when none does,
    the most accurate (ties: the cheaper)."""
    if obs.correct is None:
        raise InvalidInput("a keep target needs labelled observations", field="target")
    bounds = bounds_of(obs, replay_blocks(replays), seed=seed)
    return selection.cheapest_keeping(bounds.keep_lower, bounds.accuracy, bounds.cost_share, share)


def most_accurate_within(
    obs: Observations, replays: Sequence[Replay], budget: float, *, seed: int = 0
) -> int:
    """Index of the most accurate of `replays` (outcomes on `obs`) whose compute stays within
    `budget` of the largest tier's by its bootstrap upper bound (ties: the lower bound); when
    none does, the one with the lowest bound."""
    if obs.correct is None:
        raise InvalidInput("a budget operating point needs labelled observations", field="target")
    bounds = bounds_of(obs, replay_blocks(replays), seed=seed)
    return selection.most_accurate_within(bounds.cost_upper, bounds.accuracy, budget)


def fit_keep(obs: Observations, share: float) -> list[float]:
    """The cheapest thresholds keeping `share` of the largest tier's accuracy with a margin
    (`selection.cheapest_keeping`)."""
    if obs.correct is None:
        raise InvalidInput("a keep target needs labelled observations", field="target")
    grid = _grid(obs)
    bounds = bounds_of(obs, _cascade_blocks(obs, grid))
    index = selection.cheapest_keeping(bounds.keep_lower, bounds.accuracy, bounds.cost_share, share)
    return list(grid[index])


def routed_grid(
    obs: Observations, probabilities: NDArray[np.float64]
) -> tuple[list[tuple[float, ...]], list[tuple[float, ...]]]:
    """The two axes of the joint fit of router cut-offs and thresholds (every pair is tried,
    router first): each on the coarse quantile grid of its own score (11 quantiles, as
    `families.COARSE_GRID`), plus "never start here" (1.01) / "always" (-0.01) and never /
    always escalate."""
    levels = range(len(obs.tiers) - 1)
    router_lists = [
        [1.01, *sorted(set(np.quantile(probabilities[level], ROUTED_QUANTILES).tolist())), -0.01]
        for level in levels
    ]
    cascade_lists = [
        [
            ALWAYS_ESCALATE,
            *sorted(set(np.quantile(obs.scores[level], ROUTED_QUANTILES).tolist())),
            ALWAYS_KEEP,
        ]
        for level in levels
    ]
    return list(itertools.product(*router_lists)), list(itertools.product(*cascade_lists))


def route_starts(probabilities: NDArray[np.float64], alphas: Sequence[float]) -> NDArray[np.int64]:
    """Each request's start tier: the smallest whose predicted success reaches its cut-off."""
    levels = probabilities.shape[0]
    choice = np.full(probabilities.shape[1], levels, dtype=np.int64)
    for level in range(levels - 1, -1, -1):
        choice = np.where(probabilities[level] >= alphas[level], level, choice)
    return choice


def _routed_blocks(
    obs: Observations,
    probabilities: NDArray[np.float64],
    alphas_axis: Sequence[Sequence[float]],
    values_axis: Sequence[Sequence[float]],
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """One block per router setting: every threshold setting from those start tiers."""
    below_start = np.arange(len(obs.tiers))[:, None]
    for alphas in alphas_axis:
        start = route_starts(probabilities, alphas)
        scores = np.where(below_start < start[None, :], np.inf, obs.scores)  # never stop below
        end = np.stack([end_tiers(scores, values) for values in values_axis])
        yield np.broadcast_to(start, end.shape), end


def fit_routed(
    obs: Observations, probabilities: NDArray[np.float64], target: Target
) -> tuple[list[float], list[float]]:
    """(thresholds, router cut-offs) for a `cost` or `keep` target, with a router
    (`probabilities`: [tiers - 1, requests], each tier's predicted success) choosing where each
    request starts: the pair the target's rule picks among every pair of the joint grid."""
    if obs.correct is None:
        raise InvalidInput(
            f"a routed {target.kind} target needs labelled observations", field="target"
        )
    alphas_axis, values_axis = routed_grid(obs, probabilities)
    bounds = bounds_of(obs, _routed_blocks(obs, probabilities, alphas_axis, values_axis))
    if target.kind == "cost":
        index = selection.most_accurate_within(bounds.cost_upper, bounds.accuracy, target.value)
    elif target.kind == "keep":
        index = selection.cheapest_keeping(
            bounds.keep_lower, bounds.accuracy, bounds.cost_share, target.value
        )
    else:
        raise InvalidInput("a router is fitted with a cost or keep target", field="target")
    alphas, values = divmod(index, len(values_axis))
    return list(values_axis[values]), list(alphas_axis[alphas])


def fit_keep_routed(
    obs: Observations, probabilities: NDArray[np.float64], share: float
) -> tuple[list[float], list[float]]:
    """(thresholds, router cut-offs): the cheapest pair keeping `share` of the largest tier's
    accuracy with a margin (`fit_routed` with a `keep` target)."""
    return fit_routed(obs, probabilities, Target(kind="keep", value=share))


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
    probabilities: NDArray[np.float64] | None = None,
) -> Calibration:
    """Fit thresholds to `target` on `obs` (whose scores were read with `aggregate`). With a
    `cost` or `keep` target and the router's `probabilities` for the sample ([tiers - 1,
    requests]), the router's cut-offs are fitted with the thresholds (`fit_routed`)."""
    if len(obs.tiers) < 2:
        raise InvalidInput("calibration needs at least two tiers", field="tiers")
    if obs.size == 0:
        raise InvalidInput("calibration needs a non-empty sample", field="sample")
    start: NDArray[np.int64] | None = None  # each request's first tier, when routed
    alphas: list[float] = []
    routed = probabilities is not None and target.kind in ROUTED_KINDS
    if routed and obs.correct is not None:
        assert probabilities is not None
        values, alphas = fit_routed(obs, probabilities, target)
        start = route_starts(probabilities, alphas)
    elif target.kind == "rate":
        values = fit_rate(obs, target.value)
    elif target.kind == "cost":
        values = fit_cost(obs, target.value)
    elif target.kind == "keep":
        values = fit_keep(obs, target.value)
    else:
        values = fit_quality(obs, target.value)
    outcome = replay(obs, values, start=start)
    names = obs.tiers[:-1]
    return Calibration(
        thresholds=Thresholds(
            aggregate=aggregate,
            window=window,
            values=dict(zip(names, values, strict=True)),
            router=dict(zip(names, alphas, strict=True)) if start is not None else {},
        ),
        rates=dict(zip(names, outcome.rates, strict=True)),
        target=target,
        sample_size=obs.size,
        accuracy=outcome.accuracy,
        cost_share=outcome.cost_share,
    )
