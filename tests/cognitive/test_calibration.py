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
    keep_lower_bounds,
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


def test_the_keep_operating_point_is_the_cheapest_whose_lower_bound_keeps_the_share() -> None:
    # 400 requests: the small tier is unsure (0.9) on the quarter it gets wrong; the medium
    # tier solves half of those, only the large tier the rest.
    rng = np.random.default_rng(0)
    hard = rng.random(400) < 0.25
    harder = hard & (rng.random(400) < 0.5)
    obs = table(
        [np.where(hard, 0.9, 0.1).tolist(), np.where(harder, 0.9, 0.1).tolist(), [0.0] * 400],
        [(~hard).tolist(), (~harder).tolist(), [True] * 400],
    )
    family = cascade_family(obs, obs)
    kept = family.cheapest_keeping(obs, 0.95)
    # the unsure requests escalate as far as they must: as accurate as the largest tier
    assert kept.calibration.accuracy == pytest.approx(1.0)
    assert kept.calibration.end_tier.tolist() == np.where(harder, 2, np.where(hard, 1, 0)).tolist()
    # and the product's calibration picks the same thresholds on the same grid
    fitted = calibrate(obs, Target(kind="keep", value=0.95))
    assert replay(obs, list(fitted.thresholds.values.values())).end_tier.tolist() == (
        kept.calibration.end_tier.tolist()
    )
    # a share no configuration keeps by its lower bound: the most accurate one
    assert family.cheapest_keeping(obs, 1.0).calibration.accuracy == pytest.approx(1.0)


def test_the_lower_bound_is_a_margin_below_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    largest = rng.random(600) < 0.9
    # a configuration right on 96% of the largest tier's accuracy, one on 100%
    config = largest & (rng.random(600) < 0.96)
    bounds = keep_lower_bounds(np.vstack([config, largest]), largest)
    ratio = config.mean() / largest.mean()
    assert ratio - 0.04 < bounds[0] < ratio - 0.005
    assert bounds[1] == pytest.approx(1.0)
