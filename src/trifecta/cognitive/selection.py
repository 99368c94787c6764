"""Choosing one configuration among many with a margin: paired bootstrap bounds on a sample.

A calibration replays every configuration (thresholds, router cut-offs) on the same sample of
requests, which gives, per configuration, whether each request was answered right and what it
cost. A choice made on point estimates sits on the edge of its goal, so on new traffic it
misses that goal about half the time. Both rules here read a bound instead: each bootstrap
redraw of the sample's requests recomputes every configuration's figure on that same redraw
(paired, as `bootstrap.point_intervals` reads the evaluation), and the bound is a percentile of
those figures across redraws.

- `cheapest_keeping`: the cheapest configuration whose accuracy, relative to the largest
  tier's, keeps a share by the lower end of its 95% interval;
- `most_accurate_within`: the most accurate configuration whose compute, relative to always
  calling the largest tier, stays within a budget by the upper end of its 95% interval.

Plain numpy: the redraws are multinomial counts, so every configuration's figure on every
redraw is one matrix product.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # calibration.py builds on this module; the types only annotate
    from trifecta.cognitive.calibration import Observations, Replay

DRAWS = 400  # bootstrap redraws of the sample behind a bound
LOWER_PERCENTILE = 2.5  # the two ends of a two-sided 95% interval, as the benchmark reads it
UPPER_PERCENTILE = 97.5
CHUNK = 4096  # configurations per matrix product: bounds memory on the router's joint grid


def redraw_counts(size: int, *, draws: int = DRAWS, seed: int = 0) -> NDArray[np.float64]:
    """[draws, size]: how often each of `size` requests appears in each bootstrap redraw."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(size, np.full(size, 1.0 / size), size=draws).astype(np.float64)


def ratio_bounds(
    counts: NDArray[np.float64],
    numerators: NDArray[np.floating] | NDArray[np.bool_],
    denominator: NDArray[np.floating] | NDArray[np.bool_],
    percentile: float,
    *,
    floor: float = float(np.finfo(np.float64).tiny),
) -> NDArray[np.float64]:
    """Per row of `numerators` ([configurations, requests]): the `percentile` across the
    redraws `counts` ([draws, requests]) of its total over `denominator`'s total on the same
    redraw (that total at least `floor`)."""
    below = np.maximum(counts @ np.asarray(denominator, dtype=np.float64), floor)  # [draws]
    bounds = np.empty(numerators.shape[0], dtype=np.float64)
    for begin in range(0, numerators.shape[0], CHUNK):
        rows = np.asarray(numerators[begin : begin + CHUNK], dtype=np.float64)
        ratio = (counts @ rows.T) / below[:, None]  # [draws, chunk]
        bounds[begin : begin + CHUNK] = np.percentile(ratio, percentile, axis=0)
    return bounds


def keep_lower_bounds(
    correct: NDArray[np.bool_],
    largest: NDArray[np.bool_],
    *,
    draws: int = DRAWS,
    seed: int = 0,
) -> NDArray[np.float64]:
    """For each configuration (`correct[c, i]`: did it answer request i right), the lower end
    of the bootstrap 95% interval of its accuracy divided by the largest tier's (`largest[i]`)
    on the same redraw of the requests."""
    counts = redraw_counts(correct.shape[1], draws=draws, seed=seed)
    # a redraw where the largest tier solves nothing is read against one right answer
    return ratio_bounds(counts, correct, largest, LOWER_PERCENTILE, floor=1.0)


def cost_upper_bounds(
    flops: NDArray[np.floating],
    largest: NDArray[np.floating],
    *,
    draws: int = DRAWS,
    seed: int = 0,
) -> NDArray[np.float64]:
    """For each configuration (`flops[c, i]`: the compute request i cost under it), the upper
    end of the bootstrap 95% interval of its compute divided by always calling the largest tier
    (`largest[i]`) on the same redraw of the requests."""
    counts = redraw_counts(flops.shape[1], draws=draws, seed=seed)
    return ratio_bounds(counts, flops, largest, UPPER_PERCENTILE)


def cheapest_keeping(
    lower: NDArray[np.float64],
    accuracy: NDArray[np.float64],
    cost: NDArray[np.float64],
    share: float,
) -> int:
    """Index of the cheapest configuration (`cost`: point compute shares) whose lower bound of
    relative accuracy (`lower`) keeps `share` (ties: the more accurate); when none does, the
    most accurate (ties: the cheaper)."""
    keeping = np.flatnonzero(lower >= share)
    if keeping.size:
        return int(keeping[np.lexsort((-accuracy[keeping], cost[keeping]))[0]])
    return int(np.lexsort((cost, -accuracy))[0])


def most_accurate_within(
    upper: NDArray[np.float64], accuracy: NDArray[np.float64], budget: float
) -> int:
    """Index of the most accurate configuration whose upper bound of compute share (`upper`)
    stays within `budget` (ties: the lower bound); when none does, the lowest bound."""
    within = np.flatnonzero(upper <= budget)
    if within.size:
        return int(within[np.lexsort((upper[within], -accuracy[within]))[0]])
    return int(np.argmin(upper))


def route_flops(
    obs: Observations, start: NDArray[np.int64], end: NDArray[np.int64]
) -> NDArray[np.float64]:
    """The compute each request costs running from `start` up to and including `end` (both
    [requests] or [configurations, requests]): every tier it visits reads the whole request."""
    per_tier = obs.tokens * obs.flops_per_token[:, None]  # [tiers, requests]
    cumulative = np.vstack([np.zeros((1, obs.size)), np.cumsum(per_tier, axis=0)])
    rows = np.arange(obs.size)
    return cumulative[end + 1, rows] - cumulative[start, rows]


@dataclass(frozen=True)
class Bounds:
    """Per configuration on a sample: point accuracy and compute share, the lower end of the
    bootstrap 95% interval of its accuracy relative to the largest tier's, and the upper end of
    its compute share's (accuracies NaN when the sample is unlabelled)."""

    accuracy: NDArray[np.float64]
    cost_share: NDArray[np.float64]
    keep_lower: NDArray[np.float64]
    cost_upper: NDArray[np.float64]


def bounds_of(
    obs: Observations,
    blocks: Iterator[tuple[NDArray[np.int64], NDArray[np.int64]]],
    *,
    seed: int = 0,
) -> Bounds:
    """`Bounds` of configurations given as blocks of (start, end) tiers, each
    [configurations, requests]; every block is read on the same redraws, so the bounds are
    paired across configurations."""
    counts = redraw_counts(obs.size, seed=seed)
    largest = obs.tokens[-1] * obs.flops_per_token[-1]  # [requests]
    rows = np.arange(obs.size)
    parts: list[tuple[NDArray[np.float64], ...]] = []
    for start, end in blocks:
        flops = route_flops(obs, start, end)  # [configurations, requests]
        cost = flops.sum(axis=1) / max(float(largest.sum()), np.finfo(np.float64).tiny)
        upper = ratio_bounds(counts, flops, largest, UPPER_PERCENTILE)
        if obs.correct is None:
            accuracy = lower = np.full(start.shape[0], np.nan)
        else:
            right = obs.correct[end, rows]  # [configurations, requests]
            accuracy = right.mean(axis=1)
            lower = ratio_bounds(counts, right, obs.correct[-1], LOWER_PERCENTILE, floor=1.0)
        parts.append((accuracy, cost, lower, upper))
    accuracy, cost, lower, upper = (np.concatenate(column) for column in zip(*parts, strict=True))
    return Bounds(accuracy, cost, lower, upper)


def replay_blocks(
    replays: Sequence[Replay], chunk: int = 1024
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Replays as blocks for `bounds_of`, `chunk` at a time (bounds the stacked arrays)."""
    for begin in range(0, len(replays), chunk):
        part = replays[begin : begin + chunk]
        yield np.stack([r.start_tier for r in part]), np.stack([r.end_tier for r in part])
