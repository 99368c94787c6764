"""Threshold fitting and replay on observation tables built by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import run_cli
from trifecta.cognitive.calibration import (
    ALWAYS_KEEP,
    Observations,
    Target,
    _grid,
    calibrate,
    end_tiers,
    fit_rate,
    replay,
)
from trifecta.cognitive.families import always, cascade_family, oracle, random_escalation
from trifecta.cognitive.selection import cost_upper_bounds, keep_lower_bounds, route_flops
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


def budget_table(size: int = 400) -> Observations:
    """The small tier unsure (high score) on the quarter it gets wrong, the medium tier on half
    of those; tokens vary per request so the compute share has an interval."""
    rng = np.random.default_rng(3)
    hard = rng.random(size) < 0.25
    harder = hard & (rng.random(size) < 0.5)
    scores = np.vstack(
        [
            np.where(hard, 0.9, 0.1) + rng.random(size) * 0.05,
            np.where(harder, 0.9, 0.1) + rng.random(size) * 0.05,
            np.zeros(size),
        ]
    )
    return Observations(
        tiers=("small", "medium", "large"),
        scores=scores,
        tokens=rng.integers(5, 30, size=(3, size)).astype(np.float64),
        flops_per_token=np.array([1.0, 2.0, 10.0]),
        correct=np.vstack([~hard, ~harder, np.ones(size, dtype=bool)]),
    )


@pytest.mark.parametrize("budget", [0.15, 0.25, 0.4])
def test_the_budget_target_is_the_most_accurate_within_the_budget_by_its_upper_bound(
    budget: float,
) -> None:
    obs = budget_table()
    fitted = calibrate(obs, Target(kind="cost", value=budget))
    chosen = replay(obs, list(fitted.thresholds.values.values()))
    # every configuration of the grid with its bound, checked here one by one
    replays = [replay(obs, values) for values in _grid(obs)]
    flops = np.stack([route_flops(obs, r.start_tier, r.end_tier) for r in replays])
    upper = cost_upper_bounds(flops, obs.tokens[-1] * obs.flops_per_token[-1])
    within = upper <= budget
    assert within.any()
    [mine] = cost_upper_bounds(
        route_flops(obs, chosen.start_tier, chosen.end_tier)[None, :],
        obs.tokens[-1] * obs.flops_per_token[-1],
    )
    assert mine <= budget  # within the budget by the upper end of its interval
    assert mine > chosen.cost_share  # ... which is a margin above the point estimate
    best = max(r.accuracy or 0.0 for r, ok in zip(replays, within, strict=True) if ok)
    assert chosen.accuracy == pytest.approx(best)  # and the most accurate such


def test_a_budget_below_the_smallest_tier_gives_the_cheapest_configuration() -> None:
    obs = budget_table()
    fitted = calibrate(obs, Target(kind="cost", value=0.01))
    assert fitted.rates["small"] == 0.0  # no request leaves the small tier
    assert fitted.cost_share == pytest.approx(always(obs, 0).cost_share)


def test_an_unlabelled_budget_escalates_the_most_it_can_within_the_bound() -> None:
    labelled = budget_table()
    obs = Observations(labelled.tiers, labelled.scores, labelled.tokens, labelled.flops_per_token)
    fitted = calibrate(obs, Target(kind="cost", value=0.3))
    chosen = replay(obs, list(fitted.thresholds.values.values()))
    largest = obs.tokens[-1] * obs.flops_per_token[-1]
    flops = route_flops(obs, chosen.start_tier, chosen.end_tier)[None, :]
    assert cost_upper_bounds(flops, largest)[0] <= 0.3
    assert 0.0 < chosen.rates[0] < 1.0


def test_the_upper_bound_is_a_margin_above_the_point_estimate() -> None:
    rng = np.random.default_rng(4)
    largest = rng.integers(10, 40, size=600).astype(np.float64)
    cheap = largest * np.where(rng.random(600) < 0.3, 1.2, 0.1)  # ~0.43 of the largest's
    bounds = cost_upper_bounds(np.vstack([cheap, largest]), largest)
    share = cheap.sum() / largest.sum()
    assert share + 0.005 < bounds[0] < share + 0.06
    assert bounds[1] == pytest.approx(1.0)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_calibrate_refuses_a_budget_outside_0_1(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["cognitive", "calibrate", "--default", "--budget", value], capsys)
    assert code == 2
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1 and "budget" in lines[0]
