"""The router in front of the cascade: fitted, shipped, calibrated with the thresholds, and
followed by the live cascade, the store and online recalibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cognitive.cascade_answers import answers
from trifecta.cognitive import start_router
from trifecta.cognitive.backends import shipped_tiers
from trifecta.cognitive.calibration import (
    ALWAYS_KEEP,
    Calibration,
    Observations,
    Target,
    calibrate,
    replay,
    route_starts,
)
from trifecta.cognitive.cascade import Decision, Thresholds, cascade_of
from trifecta.cognitive.cost import all_tier_costs
from trifecta.cognitive.families import COARSE_GRID, router_family
from trifecta.cognitive.online import OnlineCalibrator
from trifecta.cognitive.prompt_features import PromptFeatures
from trifecta.cognitive.router import TrainedRouter
from trifecta.cognitive.selection import cost_upper_bounds, route_flops
from trifecta.cognitive.start_router import RouterWeights, StartRouter, fit_router
from trifecta.cognitive.store import ThresholdStore
from trifecta.cognitive.tiers import TIER_NAMES, TIERS
from trifecta.core.db import get_engine
from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import DEFAULT_MIX, generate_tasks

TASKS = generate_tasks(300, seed=5, split="train", difficulties=DEFAULT_MIX)
PROMPTS = [t.prompt for t in TASKS]
GRADES = np.array([t.difficulty for t in TASKS])


def ladder_labels() -> np.ndarray:
    """Which tier solves which task, as the shipped ladder roughly does: small the light
    grades, medium also grade 3, large everything but a few."""
    rng = np.random.default_rng(0)
    noise = rng.random((3, len(TASKS)))
    return np.vstack(
        [
            (GRADES <= 2) & (noise[0] < 0.95),
            (GRADES <= 3) & (noise[1] < 0.95),
            noise[2] < 0.97,
        ]
    )


def test_the_numpy_router_predicts_what_scikit_learn_fitted() -> None:
    labels = ladder_labels()
    weights = fit_router(PROMPTS, labels, TIER_NAMES, seed=0)
    trained = TrainedRouter(PromptFeatures(), TIER_NAMES).fit(PROMPTS, labels)
    router = StartRouter(weights)
    np.testing.assert_allclose(
        router.probabilities(PROMPTS), trained.success_probabilities(PROMPTS), atol=1e-6
    )
    starts = router.starts(PROMPTS, {"small": 0.5, "medium": 0.5})
    # light grades start small, grade 3 on the medium tier, the rest on the large one
    assert np.mean(np.array(starts)[GRADES <= 2] == 0) > 0.9
    assert np.mean(np.array(starts)[GRADES >= 4] == 2) > 0.9
    with pytest.raises(InvalidInput, match="router"):
        router.starts(PROMPTS, {"small": 0.5})


def routed_table() -> tuple[Observations, np.ndarray]:
    """A sample where the entropy signal flags every wrong answer and the router knows the
    grade: the cheapest policy sends the hard requests straight up."""
    labels = ladder_labels()
    scores = np.where(labels, 0.1, 0.9).astype(np.float64)
    scores[-1] = 0.0
    obs = Observations(
        tiers=TIER_NAMES,
        scores=scores,
        tokens=np.full(scores.shape, 10.0),
        flops_per_token=np.array([1.0, 2.0, 10.0]),
        correct=labels,
    )
    probabilities = StartRouter(fit_router(PROMPTS, labels, TIER_NAMES)).probabilities(PROMPTS)
    return obs, probabilities


def test_the_keep_calibration_fits_the_router_cutoffs_with_the_thresholds() -> None:
    obs, probabilities = routed_table()
    target = Target(kind="keep", value=0.95)
    routed = calibrate(obs, target, probabilities=probabilities)
    alone = calibrate(obs, target)
    assert set(routed.thresholds.router) == {"small", "medium"}
    assert alone.thresholds.router == {}
    # Skipping the tiers that would fail costs less at an accuracy kept as well.
    assert routed.cost_share < alone.cost_share
    assert obs.correct is not None, "the table is labelled"
    assert routed.accuracy is not None and routed.accuracy >= 0.95 * obs.correct[-1].mean()
    # The benchmark's family makes the same choice with the same rule on the same grid.
    family = router_family(
        obs, obs, probabilities, probabilities, cascade_grid=COARSE_GRID, router_grid=COARSE_GRID
    )
    chosen = family.cheapest_keeping(obs, 0.95)
    start = route_starts(probabilities, list(routed.thresholds.router.values()))
    again = replay(obs, list(routed.thresholds.values.values()), start=start)
    assert again.end_tier.tolist() == chosen.calibration.end_tier.tolist()
    assert again.cost_share == pytest.approx(routed.cost_share)


@pytest.mark.slow
def test_the_budget_calibration_fits_the_router_cutoffs_with_the_thresholds() -> None:
    obs, probabilities = routed_table()
    target = Target(kind="cost", value=0.5)
    routed = calibrate(obs, target, probabilities=probabilities)
    alone = calibrate(obs, target)
    assert set(routed.thresholds.router) == {"small", "medium"}
    # Starting the hard requests higher buys accuracy the cascade alone cannot afford.
    assert routed.accuracy is not None and alone.accuracy is not None
    assert routed.accuracy >= alone.accuracy
    start = route_starts(probabilities, list(routed.thresholds.router.values()))
    again = replay(obs, list(routed.thresholds.values.values()), start=start)
    largest = obs.tokens[-1] * obs.flops_per_token[-1]
    [upper] = cost_upper_bounds(route_flops(obs, start, again.end_tier)[None, :], largest)
    assert upper <= 0.5
    # The benchmark's family picks, by the same rule, a configuration as accurate.
    family = router_family(
        obs, obs, probabilities, probabilities, cascade_grid=COARSE_GRID, router_grid=COARSE_GRID
    )
    chosen = family.most_accurate_within(obs, 0.5)
    assert chosen.calibration.accuracy == pytest.approx(routed.accuracy)
    assert again.end_tier.tolist() == chosen.calibration.end_tier.tolist()


def test_the_cascade_starts_each_request_where_the_router_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    weights = fit_router(PROMPTS, ladder_labels(), TIER_NAMES)
    monkeypatch.setattr(start_router, "shipped_router", lambda: StartRouter(weights))
    thresholds = Thresholds(
        values={"small": ALWAYS_KEEP, "medium": ALWAYS_KEEP},
        router={"small": 0.5, "medium": 0.5},
    )
    prompts = [t.prompt for t in generate_tasks(12, seed=3, split="heldout")]
    model = cascade_of(shipped_tiers(TIER_NAMES), all_tier_costs(), thresholds)
    expected = StartRouter(weights).starts(prompts, thresholds.router)
    outputs = answers(model, prompts, max_new_tokens=8)
    for start, output in zip(expected, outputs, strict=True):
        assert output.path == [TIER_NAMES[start]]  # thresholds never escalate here
    assert len(set(expected)) > 1
    # an explicit start rule (a routing rule of the serving layer) wins over the router
    forced = cascade_of(
        shipped_tiers(TIER_NAMES), all_tier_costs(), thresholds, start=lambda b: [0] * len(b)
    )
    assert all(o.path == ["small"] for o in answers(forced, prompts[:3], max_new_tokens=4))
    # a floor (a routing rule learnt from outcomes) raises the start; the router may go higher
    floored = cascade_of(shipped_tiers(TIER_NAMES), all_tier_costs(), thresholds, floor=1)
    for start, output in zip(expected, answers(floored, prompts, max_new_tokens=8), strict=True):
        assert output.path == [TIER_NAMES[max(start, 1)]]
    # a cascade over a subset of the tiers (a server running two of them) has no router for
    # them: every request starts on its first tier
    pair = cascade_of(shipped_tiers(TIER_NAMES[:2]), all_tier_costs(), thresholds)
    assert all(o.path == ["small"] for o in answers(pair, prompts[:3], max_new_tokens=4))


def test_router_cutoffs_persist_and_survive_online_recalibration(sqlite_url: str) -> None:
    store = ThresholdStore(get_engine(sqlite_url))
    thresholds = Thresholds(
        aggregate="step", window=4, values={"small": 0.4, "medium": 0.5}, router={"small": 0.7}
    )
    calibration = Calibration(
        thresholds=thresholds,
        rates={"small": 0.3, "medium": 0.3},
        target=Target(kind="keep", value=0.95),
        sample_size=400,
        accuracy=0.9,
        cost_share=0.3,
    )
    stored = store.put("twin-r", calibration)
    assert stored.thresholds == thresholds and stored.target.kind == "keep"
    online = OnlineCalibrator(store, thresholds, calibration.rates, every=20, window=100)
    for i in range(20):
        online.observe("twin-r", Decision("small", i / 20, 0.4, False, None, 10, 3, 1.0, 1.0))
    again = store.get("twin-r")
    assert again.version == 2 and again.thresholds.router == {"small": 0.7}
    assert again.thresholds.values["small"] != 0.4


def test_the_shipped_router_and_defaults_route() -> None:
    router = start_router.shipped_router()
    assert router is not None and router.tiers == TIER_NAMES
    defaults = json.loads((TIERS["small"].directory.parent / "thresholds.json").read_text())
    assert defaults["target"] == {"kind": "cost", "value": 0.4}
    assert defaults["cost_share"] <= 0.4
    assert set(defaults["thresholds"]["router"]) == set(TIER_NAMES[:-1])
    RouterWeights.model_validate_json(start_router.router_path().read_text())
