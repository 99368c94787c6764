"""The policies `trifecta cognitive eval` compares, each as a family of configurations.

A family is every configuration of one policy (thresholds of the cascade, thresholds of the
router, both for the combination) replayed on a calibration table and on an evaluation table.
An operating point picks, on the calibration table only, the most accurate configuration that
meets a constraint (a cost budget, a share of large-tier calls), then reads its outcome on the
evaluation table, so no figure is tuned on the tasks it is reported on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trifecta.cognitive.calibration import (
    ALWAYS_ESCALATE,
    ALWAYS_KEEP,
    Observations,
    Replay,
    cheapest_keeping,
    most_accurate_within,
    outcome,
    replay,
)
from trifecta.cognitive.router import TrainedRouter

Constraint = Callable[[Replay], bool]
FULL_GRID = np.linspace(0.0, 1.0, 41)
COARSE_GRID = np.linspace(0.0, 1.0, 11)


@dataclass(frozen=True)
class Configuration:
    thresholds: tuple[float, ...]  # cascade thresholds (ALWAYS_KEEP: never escalate)
    router: tuple[float, ...] | None  # router success thresholds, None: no router
    calibration: Replay
    evaluation: Replay


@dataclass(frozen=True)
class Family:
    name: str
    configurations: list[Configuration]

    def select(self, constraint: Constraint) -> Configuration:
        """The most accurate configuration meeting `constraint` on the calibration table (ties:
        the cheapest); the cheapest configuration when none meets it."""
        meeting = [c for c in self.configurations if constraint(c.calibration)]
        if not meeting:
            return min(self.configurations, key=lambda c: c.calibration.cost_share)
        return max(
            meeting, key=lambda c: (c.calibration.accuracy or 0.0, -c.calibration.cost_share)
        )

    def cheapest_keeping(self, calib: Observations, share: float) -> Configuration:
        """The cheapest configuration whose accuracy on the calibration table keeps `share` of
        the largest tier's by its bootstrap lower bound (`calibration.cheapest_keeping`, the
        rule the product calibrates with); the most accurate when none does. The most accurate
        configuration within a budget sits at the budget's edge, so on new tasks its cost lands
        above the budget about half the time; the cheapest one that keeps the accuracy with a
        margin leaves the slack on the cost side."""
        replays = [c.calibration for c in self.configurations]
        return self.configurations[cheapest_keeping(calib, replays, share)]

    def most_accurate_within(self, calib: Observations, budget: float) -> Configuration:
        """The most accurate configuration whose compute on the calibration table stays within
        `budget` of the largest tier's by its bootstrap upper bound
        (`calibration.most_accurate_within`, the rule of the product's default target)."""
        replays = [c.calibration for c in self.configurations]
        return self.configurations[most_accurate_within(calib, replays, budget)]


def _candidates(
    values: NDArray[np.float64], grid: NDArray[np.float64], low: float, high: float
) -> list[float]:
    return [low, *sorted(set(np.quantile(values, grid).tolist())), high]


def cascade_family(
    calib: Observations, evaluation: Observations, grid: NDArray[np.float64] = FULL_GRID
) -> Family:
    lists = [
        _candidates(calib.scores[level], grid, ALWAYS_ESCALATE, ALWAYS_KEEP)
        for level in range(len(calib.tiers) - 1)
    ]
    configurations = [
        Configuration(tuple(values), None, replay(calib, values), replay(evaluation, values))
        for values in itertools.product(*lists)
    ]
    return Family("cascade", configurations)


def router_family(
    calib: Observations,
    evaluation: Observations,
    calib_probabilities: NDArray[np.float64],
    eval_probabilities: NDArray[np.float64],
    *,
    cascade_grid: NDArray[np.float64] | None = None,
    router_grid: NDArray[np.float64] = FULL_GRID,
) -> Family:
    """The trained router alone (`cascade_grid` None: a routed request never escalates), or
    the router choosing the start tier of a cascade (the combination)."""
    router_lists = [
        _candidates(calib_probabilities[level], router_grid, 1.01, -0.01)
        for level in range(len(calib.tiers) - 1)
    ]
    if cascade_grid is None:
        cascade_lists: list[list[float]] = [[ALWAYS_KEEP]] * (len(calib.tiers) - 1)
    else:
        cascade_lists = [
            _candidates(calib.scores[level], cascade_grid, ALWAYS_ESCALATE, ALWAYS_KEEP)
            for level in range(len(calib.tiers) - 1)
        ]
    configurations = []
    for alphas in itertools.product(*router_lists):
        calib_start = TrainedRouter.route(calib_probabilities, alphas)
        eval_start = TrainedRouter.route(eval_probabilities, alphas)
        for values in itertools.product(*cascade_lists):
            configurations.append(
                Configuration(
                    tuple(values),
                    tuple(alphas),
                    replay(calib, values, start=calib_start),
                    replay(evaluation, values, start=eval_start),
                )
            )
    return Family("router" if cascade_grid is None else "router+cascade", configurations)


def always(obs: Observations, level: int) -> Replay:
    """Every request answered by tier `level` alone."""
    start = np.full(obs.size, level, dtype=np.int64)
    return outcome(obs, start, start=start)


def oracle(obs: Observations) -> Replay:
    """Each request answered by the cheapest tier that solves it (the first, if none does),
    paying only for that tier: the bound no policy can beat."""
    assert obs.correct is not None
    solved = obs.correct.any(axis=0)
    cheapest = np.where(solved, obs.correct.argmax(axis=0), 0)
    return outcome(obs, cheapest, start=cheapest)


def random_escalation(obs: Observations, rates: Sequence[float], *, seed: int) -> Replay:
    """Each tier hands a uniformly random `rates[tier]` share of the requests it sees onward."""
    rng = np.random.default_rng(seed)
    end = np.zeros(obs.size, dtype=np.int64)
    reaching = np.arange(obs.size)
    for level, rate in enumerate(rates):
        count = round(rate * reaching.size)
        onward = rng.choice(reaching, size=count, replace=False) if count else reaching[:0]
        end[onward] = level + 1
        reaching = onward
    return outcome(obs, end)


def random_mean(
    obs: Observations, rates: Sequence[float], *, seeds: int = 20
) -> tuple[Replay, float]:
    """Random escalation averaged over `seeds` draws: the mean outcome and the accuracy's
    standard deviation across draws."""
    draws = [random_escalation(obs, rates, seed=s) for s in range(seeds)]
    accuracies = np.array([d.accuracy or 0.0 for d in draws])
    first = draws[0]
    mean = Replay(
        end_tier=first.end_tier,
        start_tier=first.start_tier,
        accuracy=float(accuracies.mean()),
        cost_share=float(np.mean([d.cost_share for d in draws])),
        reach=tuple(float(np.mean([d.reach[i] for d in draws])) for i in range(len(first.reach))),
        rates=tuple(rates),
    )
    return mean, float(accuracies.std())
