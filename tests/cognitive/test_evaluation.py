"""`trifecta cognitive eval` end to end on a small sample, and RouteLLM's metrics by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from trifecta.cognitive.evaluation import LIVE, EvalConfig, evaluate
from trifecta.cognitive.metrics import apgr, auroc, calls_for_gap, performance_gap_recovered
from trifecta.cognitive.report import goals, markdown, plot
from trifecta.cognitive.router import TrainedRouter


def test_routellm_metrics_by_hand() -> None:
    assert performance_gap_recovered(0.6, weak=0.4, strong=0.8) == pytest.approx(0.5)
    # PGR rising linearly from 0 at no strong calls to 1 at all of them: APGR 0.5.
    assert apgr([0.0, 0.5, 1.0], [0.4, 0.6, 0.8], weak=0.4, strong=0.8) == pytest.approx(0.5)
    assert calls_for_gap([0.0, 0.5, 1.0], [0.4, 0.6, 0.8], 0.4, 0.8, 0.5) == pytest.approx(0.5)
    assert calls_for_gap([0.0, 1.0], [0.4, 0.5], 0.4, 0.8, 0.8) is None
    assert math.isnan(performance_gap_recovered(0.5, 0.5, 0.5))
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == pytest.approx(1.0)
    assert math.isnan(auroc([0.1, 0.2], [True, True]))


def test_router_routes_to_the_smallest_tier_it_trusts() -> None:
    probabilities = np.array([[0.9, 0.2, 0.1], [0.9, 0.8, 0.1]])
    assert TrainedRouter.route(probabilities, [0.5, 0.5]).tolist() == [0, 1, 2]
    assert TrainedRouter.route(probabilities, [0.95, 0.5]).tolist() == [1, 1, 2]


@pytest.mark.slow
def test_eval_end_to_end(tmp_path: Path) -> None:
    config = EvalConfig(
        calibration_tasks=80, eval_tasks=80, router_tasks=120, seed=4, bootstrap=200
    )
    report = evaluate(config)
    methods = [p.method for p in report.points]
    for expected in (
        "always small",
        "always medium",
        "always large",
        "cascade",
        "router",
        "features router",
        "router+cascade",
        "features router+cascade",
        "random escalation",
        "oracle",
        LIVE,
    ):
        assert expected in methods
        interval = report.intervals[expected]
        point = report.point(expected)
        assert interval.accuracy.low <= point.accuracy + 1e-9  # roughly around the estimate
        assert interval.accuracy.high >= point.accuracy - 0.1
    large = report.point("always large")
    assert large.cost_share == pytest.approx(1.0) and large.usd_share == pytest.approx(1.0)
    oracle = report.point("oracle")
    assert oracle.accuracy >= max(p.accuracy for p in report.points if p.method != "oracle")
    # The live auto model makes the replayed decisions; stopping early only saves tokens.
    assert report.live_agrees
    assert report.point(LIVE).cost_share <= report.extras["replayed cost share"] + 1e-9
    assert report.thresholds.router  # the product routes (a router ships)
    assert {g.method for g in report.gap} == {
        "cascade",
        "router",
        "features router",
        "router+cascade",
        "features router+cascade",
        "random escalation",
    }
    assert set(report.gap_intervals) == {g.method for g in report.gap}
    assert report.apgr_margin is not None and report.apgr_baseline in (
        "router",
        "features router",
        "random escalation",
    )
    assert set(report.aurocs) == {"step", "block", "mean", "max"}
    assert len(goals(report)) == 3
    text = markdown(report)
    assert "APGR" in text and f"| {LIVE} |" in text
    assert plot(report, tmp_path / "eval.png").stat().st_size > 10_000


def test_prompt_features_read_the_structure() -> None:
    from trifecta.cognitive.prompt_features import FEATURES, PromptFeatures, features

    row = dict(zip(FEATURES, features("t=41,p=17,r=63,s=5;t+r-p?"), strict=True))
    assert (row["operands"], row["lookups"], row["subtractions"], row["telemetry"]) == (3, 3, 1, 4)
    assert row["grade_5"] == 1 and row["in_family"] == 1
    other = dict(zip(FEATURES, features("What is 7*6?"), strict=True))
    assert other["in_family"] == 0 and other["length"] == len("What is 7*6?")
    assert PromptFeatures().embed(["41+17?", "1+2-3?"]).shape == (2, len(FEATURES))


def test_bootstrap_intervals_cover_a_known_accuracy() -> None:
    from trifecta.cognitive.bootstrap import point_intervals
    from trifecta.cognitive.calibration import Observations

    rng = np.random.default_rng(0)
    correct = np.vstack([rng.random(400) < 0.3, rng.random(400) < 0.8])
    obs = Observations(
        ("small", "large"),
        scores=np.zeros((2, 400)),
        tokens=np.ones((2, 400)),
        flops_per_token=np.array([1.0, 10.0]),
        correct=correct,
    )
    zeros, ones = np.zeros(400, dtype=np.int64), np.ones(400, dtype=np.int64)
    ci = point_intervals(obs, np.array([1.0, 5.0]), {"small": [(zeros, zeros)]}, samples=500)
    small = ci["small"]
    assert small.accuracy.contains(float(correct[0].mean()))
    assert small.accuracy.high - small.accuracy.low < 0.12
    assert small.cost_share.contains(0.1) and small.usd_share.contains(0.2)
    escalated = point_intervals(obs, np.array([1.0, 5.0]), {"all": [(zeros, ones)]}, samples=200)
    assert escalated["all"].relative_accuracy.contains(1.0)
