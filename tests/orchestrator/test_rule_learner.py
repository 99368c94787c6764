"""The routing rules' learner: a domain's evidence read beside the fleet's for the same kind."""

from __future__ import annotations

from trifecta.context.deltas import AddOp
from trifecta.orchestrator.routing import MIN_SAMPLES, RuleLearner, advise

TIERS = ["small", "medium", "large"]


def test_a_domain_follows_the_fleet_when_its_own_outcomes_agree() -> None:
    learner = RuleLearner(TIERS)
    # The fleet's small tier hands nearly every `chain` task on, spread over many domains,
    # none of which reaches MIN_SAMPLES outcomes of its own.
    early = [learner.observe(f"d{i % 6}", "chain", "small", failed=True) for i in range(7)]
    assert early == [None] * 7  # the fleet has fewer than MIN_SAMPLES outcomes yet
    delta = learner.observe("fresh", "chain", "small", failed=True)
    assert delta is not None
    (op,) = delta.ops
    assert isinstance(op, AddOp) and op.section == "routing_start_chain"
    assert op.content.startswith("start: chain tasks start on the medium tier")
    assert "1 of 1 handed on or wrong" in op.content and "in the fleet" in op.content
    assert learner.observe("fresh", "chain", "small", failed=True) is None  # proposed once


def test_a_domain_whose_own_outcomes_disagree_gets_no_rule() -> None:
    learner = RuleLearner(TIERS)
    for i in range(20):
        learner.observe(f"d{i % 5}", "chain", "small", failed=True)
    # This domain's small tier answers its `chain` tasks: its own evidence holds the rule back.
    outcomes = [learner.observe("own", "chain", "small", failed=False) for _ in range(8)]
    assert outcomes == [None] * 8  # a success never makes a rule
    # one failure among its nine: 1 of 9 here against 21 of 29 in the fleet reads 0.38
    assert learner.observe("own", "chain", "small", failed=True) is None
    assert RuleLearner.failure_share([9, 1], [29, 21]) < 0.6


def test_no_rule_before_the_fleet_has_enough_outcomes_nor_for_a_rung_that_mostly_answers() -> None:
    learner = RuleLearner(TIERS)
    for _ in range(MIN_SAMPLES - 1):
        assert learner.observe("one", "chain", "small", failed=True) is None
    for i in range(40):
        assert learner.observe(f"d{i % 4}", "add", "edge", failed=i % 5 == 0) is None
    assert learner.observe("one", "chain", "small", failed=True) is not None  # the 8th


def test_the_learnt_rule_parses_back_into_the_route() -> None:
    from trifecta.context.models import Bullet, RankedBullet

    learner = RuleLearner(TIERS)
    delta = None
    for i in range(MIN_SAMPLES):
        delta = learner.observe(f"d{i}", "lookup_add", "small", failed=True) or delta
    assert delta is not None
    (op,) = delta.ops
    assert isinstance(op, AddOp)
    bullet = Bullet(
        id="b-1", section=op.section, content=op.content, created_at=0.0, updated_at=0.0
    )
    advice = advise("lookup_add", [RankedBullet(bullet=bullet, score=0.0)], TIERS)
    assert advice.start_tier == "medium" and advice.rules == ("b-1",)
