"""The routing rule learnt from outcomes: a capsule's grade goes to the generative layer only
when its verified accuracy there beats the cognitive cascade's by the margin, with enough
samples and one-sided confidence (a planted advantage is found; equal layers are left alone)."""

from __future__ import annotations

import numpy as np
import pytest

from trifecta.orchestrator.routing import GenerativeRouteRule, Tally, difference_lower_bound


def _feed(
    rule: GenerativeRouteRule, rng: np.random.Generator, route: str, p: float, n: int
) -> None:
    for ok in rng.random(n) < p:
        rule.observe("twin", 4, route, bool(ok))


def test_a_planted_advantage_routes_the_grade_once_the_evidence_is_enough() -> None:
    rng = np.random.default_rng(0)
    rule = GenerativeRouteRule()
    _feed(rule, rng, "generative", 0.85, 19)
    _feed(rule, rng, "cognitive", 0.45, 60)
    assert not rule.prefers_generative("twin", 4)  # 19 generative samples: too few
    _feed(rule, rng, "generative", 0.85, 41)
    evidence = rule.evidence("twin", 4)
    assert evidence.generative.trials == 60 and evidence.cognitive.trials == 60
    assert evidence.lower_bound is not None and evidence.lower_bound > rule.margin
    assert rule.prefers_generative("twin", 4)
    # Only that capsule and grade.
    assert not rule.prefers_generative("twin", 3)
    assert not rule.prefers_generative("other", 4)


def test_the_rule_stops_when_the_generative_layer_stops_winning() -> None:
    rng = np.random.default_rng(1)
    rule = GenerativeRouteRule()
    _feed(rule, rng, "generative", 0.9, 40)
    _feed(rule, rng, "cognitive", 0.4, 40)
    assert rule.prefers_generative("twin", 4)
    _feed(rule, rng, "generative", 0.2, 120)
    assert not rule.prefers_generative("twin", 4)


def test_routes_other_than_the_two_layers_are_not_counted() -> None:
    rule = GenerativeRouteRule(min_samples=1)
    for route in ("cache", "edge", "symbolic"):
        rule.observe("twin", 4, route, True)
    evidence = rule.evidence("twin", 4)
    assert evidence.generative.trials == evidence.cognitive.trials == 0


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_equal_layers_are_routed_there_rarely(p: float) -> None:
    """Simulated capsules whose layers are equally accurate: the rule (margin 0) fires in at
    most about 5% of them, its one-sided confidence; with the 5-point margin, almost never."""
    rng = np.random.default_rng(2)
    n, capsules = 40, 400
    gen = rng.binomial(n, p, capsules)
    cog = rng.binomial(n, p, capsules)
    bounds = np.array(
        [
            difference_lower_bound(Tally(g, n), Tally(c, n), 0.95)
            for g, c in zip(gen, cog, strict=True)
        ]
    )
    assert (bounds > 0).mean() <= 0.07
    assert (bounds > 0.05).mean() <= 0.03


def test_the_bound_is_below_the_observed_difference_and_tightens_with_samples() -> None:
    few = difference_lower_bound(Tally(16, 20), Tally(10, 20), 0.95)
    many = difference_lower_bound(Tally(160, 200), Tally(100, 200), 0.95)
    assert few < 0.3 and many < 0.3 and few < many
