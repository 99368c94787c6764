"""Threshold fitting and replay on observation tables built by hand."""

from __future__ import annotations

import numpy as np
import pytest

from trifecta.cognitive.calibration import (
    ALWAYS_KEEP,
    Observations,
    Target,
    calibrate,
    end_tiers,
    fit_rate,
    replay,
)
from trifecta.cognitive.families import always, cascade_family, oracle, random_escalation
from trifecta.core.errors import InvalidInput


def table(scores: list[list[float]], correct: list[list[bool]] | None = None) -> Observations:
    array = np.asarray(scores, dtype=np.float64)
    return Observations(
        tiers=("small", "medium", "large")[: array.shape[0]],
        scores=array,
        tokens=np.full(array.shape, 10.0),
        flops_per_token=np.array([1.0, 2.0, 10.0])[: array.shape[0]],
        correct=None if correct is None else np.asarray(correct, dtype=bool),
    )


def test_a_request_ends_on_the_first_tier_at_or_below_its_threshold() -> None:
    scores = np.array([[0.1, 0.9, 0.9, 0.5], [0.0, 0.1, 0.9, 0.0]])
    assert end_tiers(np.vstack([scores, np.zeros(4)]), [0.5, 0.5]).tolist() == [0, 1, 2, 0]


def test_replay_counts_accuracy_cost_and_reach() -> None:
    obs = table(
        [[0.1, 0.9, 0.9, 0.9], [0.0, 0.1, 0.9, 0.9], [0, 0, 0, 0]],
        [[True, False, False, False], [True, True, False, False], [True, True, True, False]],
    )
    outcome = replay(obs, [0.5, 0.5])
    assert outcome.end_tier.tolist() == [0, 1, 2, 2]
    assert outcome.accuracy == pytest.approx(0.75)
    # small on all 4, medium on 3, large on 2: (4*1 + 3*2 + 2*10) / (4*10)
    assert outcome.cost_share == pytest.approx(30 / 40)
    assert outcome.reach == pytest.approx((1.0, 0.75, 0.5))
    assert outcome.rates == pytest.approx((0.75, 2 / 3))


def test_rate_target_hands_on_the_asked_share() -> None:
    rng = np.random.default_rng(0)
    obs = table(rng.random((3, 1000)).tolist())
    values = fit_rate(obs, 0.3)
    outcome = replay(obs, values)
    assert outcome.rates[0] == pytest.approx(0.3, abs=0.01)
    assert outcome.rates[1] == pytest.approx(0.3, abs=0.02)


def test_cost_target_buys_the_most_accuracy_within_the_budget() -> None:
    # The small tier is wrong exactly where its score is high; the large tier is always right.
    rng = np.random.default_rng(1)
    small = rng.random(400)
    correct = [(small < 0.7).tolist(), (small < 0.85).tolist(), [True] * 400]
    obs = table([small.tolist(), small.tolist(), [0.0] * 400], correct)
    calibration = calibrate(obs, Target(kind="cost", value=0.5))
    assert calibration.cost_share <= 0.5
    assert calibration.accuracy == pytest.approx(1.0)


def test_quality_target_is_met_at_the_least_cost() -> None:
    rng = np.random.default_rng(2)
    small = rng.random(400)
    correct = [(small < 0.6).tolist(), (small < 0.6).tolist(), [True] * 400]
    obs = table([small.tolist(), small.tolist(), [0.0] * 400], correct)
    calibration = calibrate(obs, Target(kind="quality", value=0.9))
    assert calibration.accuracy is not None and calibration.accuracy >= 0.9
    # The medium tier adds nothing here: the cheapest way skips it.
    assert (
        calibration.rates["medium"] == pytest.approx(1.0)
        or calibration.thresholds.values["medium"] < 0
    )


def test_unreachable_quality_gives_the_most_accurate_thresholds() -> None:
    obs = table([[0.1, 0.9], [0.1, 0.9], [0.0, 0.0]], [[True, False], [True, False], [True, False]])
    calibration = calibrate(obs, Target(kind="quality", value=1.0))
    assert calibration.accuracy == pytest.approx(0.5)


def test_calibration_refuses_bad_input() -> None:
    with pytest.raises(InvalidInput, match="labelled"):
        calibrate(table([[0.1], [0.2], [0.0]]), Target(kind="quality", value=0.9))
    with pytest.raises(InvalidInput, match="two tiers"):
        calibrate(table([[0.1]]), Target(kind="rate", value=0.5))
    with pytest.raises(ValueError, match="less than or equal"):
        Target(kind="rate", value=1.5)


def test_always_oracle_and_random_policies() -> None:
    obs = table(
        [[0.1, 0.9, 0.9], [0.1, 0.1, 0.9], [0, 0, 0]],
        [[True, False, False], [True, True, False], [True, True, False]],
    )
    assert always(obs, 2).cost_share == pytest.approx(1.0)
    assert always(obs, 0).cost_share == pytest.approx(0.1)
    best = oracle(obs)
    assert best.accuracy == pytest.approx(2 / 3)
    assert best.end_tier.tolist() == [0, 1, 0]
    never = random_escalation(obs, [0.0, 0.0], seed=0)
    assert never.end_tier.tolist() == [0, 0, 0]
    everything = random_escalation(obs, [1.0, 1.0], seed=0)
    assert everything.end_tier.tolist() == [2, 2, 2]
    assert ALWAYS_KEEP > 100


def test_the_matching_operating_point_is_the_cheapest_as_accurate_as_the_largest_tier() -> None:
    # Four requests: the small tier is unsure (0.9) on the two it gets wrong; the medium tier
    # solves the first of them, only the large one the second.
    obs = table(
        [[0.1, 0.1, 0.9, 0.9], [0.1, 0.1, 0.1, 0.9], [0, 0, 0, 0]],
        [[True, True, False, False], [True, True, True, False], [True, True, True, True]],
    )
    family = cascade_family(obs, obs)
    largest = always(obs, 2).accuracy or 0.0
    anything = family.select(lambda r: True)
    assert anything.calibration.accuracy == pytest.approx(1.0)
    matched = family.cheapest_reaching(lambda r: True, largest)
    assert matched.calibration.accuracy == pytest.approx(1.0)
    # as accurate, and no configuration reaching it is cheaper
    reaching = [c for c in family.configurations if (c.calibration.accuracy or 0) >= largest]
    assert matched.calibration.cost_share == min(c.calibration.cost_share for c in reaching)
    assert matched.calibration.cost_share <= anything.calibration.cost_share
    # the two unsure requests escalate, one ends on the medium tier, one on the large
    assert matched.calibration.end_tier.tolist() == [0, 0, 1, 2]
    # unreachable accuracy: the most accurate within the constraint
    cheap = family.cheapest_reaching(lambda r: r.cost_share <= 0.2, 2.0)
    assert cheap == family.select(lambda r: r.cost_share <= 0.2)
