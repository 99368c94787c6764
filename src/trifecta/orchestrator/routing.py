"""Routing rules: the part of a domain's ACE playbook that the orchestrator acts on.

The shipped models are character-level and cannot read a playbook in their prompt, so the
playbook steers the route instead. A routing bullet (section `routing_start_<kind>` or
`routing_noedge_<kind>`, one active rule per section) says, in words a person reads and this
module parses back:

    start: lookup_chain tasks start on the large tier (small: 9 of 12 handed on or wrong)
    no-edge: add tasks stay off the edge (edge: 7 of 10 wrong)

`RuleLearner` writes such bullets as ACE deltas from measured outcomes (a structured insight,
not invented text): `ADD` for a new rule, `UPDATE` when a start rule moves up a tier. A
domain's own outcomes are few (a fleet spreads a kind's requests over a dozen domains: in a
300-request pass no domain reached 8 outcomes of a rung that failed 85% of the time), so a
domain's failure share is read shrunk toward the fleet's for the same kind and rung (a Beta
prior at the fleet's share, worth `PRIOR_WEIGHT` outcomes): the fleet's evidence makes the
rule quickly where the domain agrees with it, the domain's own outcomes hold it back where
they disagree. Only counts of outcomes are pooled, never a request or its context. Every
request that follows a rule names the bullet in its trajectory, so the context layer's
reflector tags it helpful or harmful by the verifier's verdict, and grow-and-refine prunes
rules that hurt. A second run starts from the rules the first one learned.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from trifecta.context.deltas import AddOp, Delta, UpdateOp
from trifecta.context.models import RankedBullet

START, NO_EDGE = "routing_start_", "routing_noedge_"
_START = re.compile(r"^start: (?P<kind>[a-z_]+) tasks start on the (?P<tier>[a-z0-9_-]+) tier")
_NO_EDGE = re.compile(r"^no-edge: (?P<kind>[a-z_]+) tasks stay off the edge")
# How much evidence makes a rule: at least MIN_SAMPLES outcomes of the rung for the kind in
# the fleet, and most of them bad in the domain's share shrunk toward the fleet's, read when
# the domain's own outcome is a failure.
MIN_SAMPLES = 8
FAILURE_SHARE = 0.6
PRIOR_WEIGHT = 8.0  # outcomes the fleet's share weighs as, against the domain's own


@dataclass(frozen=True)
class RouteAdvice:
    start_tier: str | None  # None: the cascade's first tier
    edge: bool  # may the edge serve it
    rules: tuple[str, ...]  # bullet ids of the rules that changed the route


def advise(kind: str | None, bullets: Iterable[RankedBullet], tiers: Sequence[str]) -> RouteAdvice:
    """The route the domain's routing rules give a task of `kind`. Rules with more harmful
    than helpful tags are not followed (grow-and-refine prunes them later)."""
    if kind is None:
        return RouteAdvice(None, True, ())
    start, edge, used = None, True, []
    for ranked in bullets:
        bullet = ranked.bullet
        if bullet.harmful > bullet.helpful:
            continue
        if bullet.section == START + kind and (m := _START.match(bullet.content)):
            if m["tier"] in tiers and (
                start is None or tiers.index(m["tier"]) > tiers.index(start)
            ):
                start = m["tier"]
                used.append(bullet.id)
        elif bullet.section == NO_EDGE + kind and _NO_EDGE.match(bullet.content):
            edge = False
            used.append(bullet.id)
    return RouteAdvice(start, edge, tuple(used))


def current_start_rule(kind: str, bullets: Iterable[RankedBullet]) -> str | None:
    """The id of the domain's start rule for `kind`, if it has one."""
    return next((r.bullet.id for r in bullets if r.bullet.section == START + kind), None)


def start_rule(
    kind: str,
    tier: str,
    failed: int,
    total: int,
    below: str,
    fleet_failed: int | None = None,
    fleet_total: int | None = None,
) -> str:
    evidence = f"{below}: {failed} of {total} handed on or wrong" + _in_fleet(
        fleet_failed, fleet_total
    )
    return f"start: {kind} tasks start on the {tier} tier ({evidence})"


def no_edge_rule(
    kind: str,
    failed: int,
    total: int,
    fleet_failed: int | None = None,
    fleet_total: int | None = None,
) -> str:
    evidence = f"edge: {failed} of {total} wrong" + _in_fleet(fleet_failed, fleet_total)
    return f"no-edge: {kind} tasks stay off the edge ({evidence})"


def _in_fleet(failed: int | None, total: int | None) -> str:
    return "" if failed is None or total is None else f", {failed} of {total} in the fleet"


class RuleLearner:
    """Counts, per domain and task kind, how the first rung of each route fared, and proposes
    a rule when a rung mostly fails: start on the next tier, or stay off the edge."""

    def __init__(self, tiers: Sequence[str]):
        self.tiers = list(tiers)
        self._counts: dict[tuple[str, str, str], list[int]] = {}  # (domain, kind, rung)
        self._fleet: dict[tuple[str, str], list[int]] = {}  # (kind, rung): every domain's
        self._proposed: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    @staticmethod
    def failure_share(own: Sequence[int], fleet: Sequence[int]) -> float:
        """The domain's failure share (`own` = [outcomes, failures]) under a Beta prior at the
        fleet's share worth `PRIOR_WEIGHT` outcomes: the posterior mean."""
        prior = fleet[1] / fleet[0] if fleet[0] else 0.0
        return (own[1] + PRIOR_WEIGHT * prior) / (own[0] + PRIOR_WEIGHT)

    def observe(
        self,
        domain: str,
        kind: str,
        rung: str,
        failed: bool,
        bullets: Sequence[RankedBullet] = (),
    ) -> Delta | None:
        """Record that `rung` (`edge` or a tier name) served or failed a `kind` task first;
        return the delta for a rule when the evidence has just become enough. `bullets` are the
        domain's retrieved bullets, so that a start rule moving up a tier is an UPDATE."""
        key = (domain, kind, rung)
        with self._lock:
            counts = self._counts.setdefault(key, [0, 0])
            fleet = self._fleet.setdefault((kind, rung), [0, 0])
            for tally in (counts, fleet):
                tally[0] += 1
                tally[1] += int(failed)
            if (  # a rule follows one of the domain's own failures, never a success
                not failed
                or key in self._proposed
                or fleet[0] < MIN_SAMPLES
                or self.failure_share(counts, fleet) < FAILURE_SHARE
            ):
                return None
            self._proposed.add(key)
            total, bad = counts
            fleet_total, fleet_bad = fleet
        if rung == "edge":
            op = AddOp(
                op_id=f"rule-{domain}-{kind}-no-edge",
                section=NO_EDGE + kind,
                content=no_edge_rule(kind, bad, total, fleet_bad, fleet_total),
            )
            return Delta(ops=[op], source="orchestrator rule learner")
        index = self.tiers.index(rung)
        if index + 1 >= len(self.tiers):
            return None  # the last tier has nowhere to hand on to
        nxt = self.tiers[index + 1]
        content = start_rule(kind, nxt, bad, total, rung, fleet_bad, fleet_total)
        op_id = f"rule-{domain}-{kind}-start-{nxt}"
        existing = current_start_rule(kind, bullets)
        if existing is not None:
            return Delta(
                ops=[UpdateOp(op_id=op_id, bullet_id=existing, content=content)],
                source="orchestrator rule learner",
            )
        op = AddOp(op_id=op_id, section=START + kind, content=content)
        return Delta(ops=[op], source="orchestrator rule learner")


# -- the generative layer: a route learnt from verified outcomes ------------------------------
GENERATIVE_MARGIN = 0.05  # accuracy points the generative layer must win by
GENERATIVE_MIN_SAMPLES = 20  # verified outcomes on each side before any comparison
GENERATIVE_CONFIDENCE = 0.95  # one-sided


@dataclass
class Tally:
    successes: int = 0
    trials: int = 0

    @property
    def accuracy(self) -> float:
        return self.successes / self.trials if self.trials else 0.0


@dataclass(frozen=True)
class GenerativeEvidence:
    generative: Tally
    cognitive: Tally
    lower_bound: float | None  # of generative minus cognitive accuracy; None: too few samples
    prefer_generative: bool


def difference_lower_bound(a: Tally, b: Tally, confidence: float) -> float:
    """One-sided lower confidence bound of accuracy(a) - accuracy(b): Newcombe's hybrid score
    interval (1998, method 10), built from each side's Wilson score interval at the two-sided
    level 2 * confidence - 1. Unlike the Wald interval it stays sound near 0 and 1 and with
    tens of samples, where a layer's accuracy on a grade often sits."""
    from scipy.stats import binomtest

    level = 2 * confidence - 1
    low_a = binomtest(a.successes, a.trials).proportion_ci(level, method="wilson").low
    high_b = binomtest(b.successes, b.trials).proportion_ci(level, method="wilson").high
    pa, pb = a.accuracy, b.accuracy
    return pa - pb - math.sqrt((pa - low_a) ** 2 + (high_b - pb) ** 2)


class GenerativeRouteRule:
    """Per capsule and grade, the verified outcomes of the generative layer and of the
    cognitive cascade; a grade goes to the generative layer when it is better there with
    confidence: at least `min_samples` verified outcomes on each side, and the one-sided
    `confidence` lower bound of (generative - cognitive accuracy) above `margin`.

    The capsule's declared `generative_share` keeps sending it samples either way, so a rule
    that stops holding (the generative accuracy falls) stops routing by itself."""

    def __init__(
        self,
        margin: float = GENERATIVE_MARGIN,
        min_samples: int = GENERATIVE_MIN_SAMPLES,
        confidence: float = GENERATIVE_CONFIDENCE,
    ):
        self.margin, self.min_samples, self.confidence = margin, min_samples, confidence
        self._tallies: dict[tuple[str, int, str], Tally] = {}
        self._lock = threading.Lock()

    def observe(self, capsule_id: str, grade: int, route: str, verified: bool) -> None:
        """A verified outcome of `route` (only `generative` and `cognitive` are compared)."""
        if route not in ("generative", "cognitive"):
            return
        with self._lock:
            tally = self._tallies.setdefault((capsule_id, grade, route), Tally())
            tally.trials += 1
            tally.successes += int(verified)

    def evidence(self, capsule_id: str, grade: int) -> GenerativeEvidence:
        with self._lock:
            gen = self._tallies.get((capsule_id, grade, "generative"), Tally())
            cog = self._tallies.get((capsule_id, grade, "cognitive"), Tally())
            gen, cog = Tally(gen.successes, gen.trials), Tally(cog.successes, cog.trials)
        if min(gen.trials, cog.trials) < self.min_samples:
            return GenerativeEvidence(gen, cog, None, False)
        bound = difference_lower_bound(gen, cog, self.confidence)
        return GenerativeEvidence(gen, cog, bound, bound > self.margin)

    def prefers_generative(self, capsule_id: str, grade: int) -> bool:
        return self.evidence(capsule_id, grade).prefer_generative
