"""Bootstrap 95% intervals over the held-out evaluation tasks, for every policy's figures.

A policy's operating points are fixed on the calibration sample (thresholds, router cut-offs);
what varies with the evaluation tasks drawn is how well those points do. So each bootstrap
sample redraws the evaluation tasks with replacement and recomputes, for the same fixed
choices (each request's start and end tier), the accuracy, the compute and dollar shares, and
RouteLLM's APGR and CPT against the small and large tiers on that same draw. Percentile
intervals (2.5%, 97.5%) over `samples` draws, seeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trifecta.cognitive.calibration import Observations, outcome
from trifecta.cognitive.metrics import apgr, calls_for_gap

Route = tuple[NDArray[np.int64], NDArray[np.int64]]  # (start tier, end tier) per request


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"[{self.low:.3f}, {self.high:.3f}]"


def interval(values: Sequence[float] | NDArray[np.float64]) -> Interval:
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return Interval(float("nan"), float("nan"))
    low, high = np.percentile(finite, [2.5, 97.5])
    return Interval(float(low), float(high))


def _draws(size: int, samples: int, seed: int) -> NDArray[np.int64]:
    return np.random.default_rng(seed).integers(0, size, size=(samples, size))


def _usd_share(obs: Observations, usd: NDArray[np.float64], start: NDArray, end: NDArray) -> float:
    levels = np.arange(len(obs.tiers))[:, None]
    visited = (levels >= start[None, :]) & (levels <= end[None, :])
    largest = float((obs.tokens[-1] * usd[-1]).sum())
    return float((visited * obs.tokens * usd[:, None]).sum() / largest) if largest else 0.0


@dataclass(frozen=True)
class PointIntervals:
    accuracy: Interval
    cost_share: Interval
    usd_share: Interval
    relative_accuracy: Interval  # accuracy / the largest tier's accuracy on the same draw


def point_intervals(
    obs: Observations,
    usd_per_token: NDArray[np.float64],
    routes: Mapping[str, Sequence[Route]],
    *,
    samples: int = 1000,
    seed: int = 0,
) -> dict[str, PointIntervals]:
    """Intervals for each policy; a policy with several routes (random escalation's draws)
    uses one per bootstrap sample, in turn."""
    last = len(obs.tiers) - 1
    figures: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in routes}
    for index, rows in enumerate(_draws(obs.size, samples, seed)):
        drawn = obs.subset(rows)
        assert drawn.correct is not None
        large = float(drawn.correct[last].mean())
        for name, options in routes.items():
            start, end = options[index % len(options)]
            replay = outcome(drawn, end[rows], start=start[rows])
            accuracy = replay.accuracy or 0.0
            figures[name].append(
                (
                    accuracy,
                    replay.cost_share,
                    _usd_share(drawn, usd_per_token, start[rows], end[rows]),
                    accuracy / large if large else float("nan"),
                )
            )
    return {
        name: PointIntervals(*(interval([row[k] for row in rows]) for k in range(4)))
        for name, rows in figures.items()
    }


@dataclass(frozen=True)
class GapIntervals:
    apgr: Interval
    cpt50: Interval
    cpt80: Interval


def gap_intervals(
    obs: Observations,
    curves: Mapping[str, Sequence[Route]],
    call_shares: Sequence[float],
    *,
    samples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, GapIntervals], dict[str, NDArray[np.float64]]]:
    """Intervals of APGR and CPT(50%) / CPT(80%) for each policy's curve (one route per call
    share, chosen on calibration), read as `evaluation._gap_metrics` reads it. A draw on which
    a policy never recovers x% of the gap counts as a call share of 1 for CPT(x%). Also
    returns each policy's APGR on every draw, for paired comparisons (`paired_difference`)."""
    last = len(obs.tiers) - 1
    values: dict[str, list[tuple[float, float, float]]] = {name: [] for name in curves}
    for rows in _draws(obs.size, samples, seed):
        correct = obs.correct[:, rows] if obs.correct is not None else None
        assert correct is not None
        weak, strong = float(correct[0].mean()), float(correct[last].mean())
        for name, routes in curves.items():
            accuracies, shares = [], []
            for (_, end), x in zip(routes, call_shares, strict=True):
                ends = end[rows]
                accuracies.append(float(correct[ends, np.arange(rows.size)].mean()))
                shares.append(min(float((ends == last).mean()), x))
            cpt50 = calls_for_gap(shares, accuracies, weak, strong, 0.5)
            cpt80 = calls_for_gap(shares, accuracies, weak, strong, 0.8)
            values[name].append(
                (
                    apgr(list(call_shares), accuracies, weak, strong),
                    1.0 if cpt50 is None else cpt50,
                    1.0 if cpt80 is None else cpt80,
                )
            )
    intervals = {
        name: GapIntervals(*(interval([row[k] for row in rows]) for k in range(3)))
        for name, rows in values.items()
    }
    draws = {name: np.array([row[0] for row in rows]) for name, rows in values.items()}
    return intervals, draws


def paired_difference(a: NDArray[np.float64], b: NDArray[np.float64]) -> Interval:
    """Interval of `a - b` over the same bootstrap draws (a paired comparison)."""
    return interval(a - b)
