"""The planner: place a fleet on a topology at the lowest cost per hour.

Every plan is the cheapest of a few candidates, each a complete placement:
1. The optimiser. A fleet that aggregates into at most AGGREGATION_LIMIT capsule classes is
   solved as one mixed-integer program over the classes (`fleet/class_milp.py`, HiGHS);
   above that, or when the MILP stops far from its bound, the fluid relaxation is rounded
   and priced exactly (`fleet/fluid.py`, `fleet/repack.py`).
2. The greedy baselines (`fleet/greedy.py`, both rules), run first on the same classes: a
   planner that loses to first fit is a defect, and keeping the greedy plans as candidates
   makes that impossible whatever the solvers' time limits do on a loaded machine.
3. The best greedy placement re-packed (`fleet/repack.py`: its homes kept, replicas and flows
   chosen by the MILP), when it beats the optimiser or the optimiser stopped far from its
   bound.
The cheapest candidate that passes `verify_plan` is returned. `plan.solver.method` names it,
`plan.solver.candidates` gives every candidate's cost, and the gap is to the best proven
lower bound any optimiser stage found. The phase target (dev: under $5/hour) is checked on
the result: a plan under the target exists only if the cheapest plan is under it, and
checking afterwards lets the error say by how much it misses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trifecta.core.errors import Infeasible, InvalidInput, TrifectaError
from trifecta.core.logging import get_logger
from trifecta.core.settings import PHASES, Phase
from trifecta.fleet.assemble import CapsuleDecision, assemble_plan
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.class_milp import Model, build_model, class_decisions, solve_model
from trifecta.fleet.classes import CapsuleClass, build_classes
from trifecta.fleet.costs import phase_budget
from trifecta.fleet.fluid import CapsuleType, capsule_types, relaxation_bound, round_homes
from trifecta.fleet.greedy import GreedyPlacement, GreedyRule, greedy_placement
from trifecta.fleet.plan_check import verify_plan
from trifecta.fleet.plan_model import Plan, SolverReport
from trifecta.fleet.pools import PoolShape, pool_shapes
from trifecta.fleet.repack import repack, solve_fixed_homes
from trifecta.fleet.topology import Topology

__all__ = ["AGGREGATION_LIMIT", "FALLBACK_GAP", "Model", "plan"]

log = get_logger(__name__)
_UNSET = object()
# Above this many classes the MILP no longer aggregates the fleet (continuous demand): plan
# by rounding the fluid relaxation instead (`fleet/fluid.py`).
AGGREGATION_LIMIT = 400
# An optimiser plan further than this from its bound is compared with the other routes.
FALLBACK_GAP = 0.02
GREEDY_RULES: tuple[GreedyRule, ...] = ("marginal", "price-per-token")
# The solvers share one time limit: the class MILP gets this share of it, and a fallback
# (rounding, re-pack) what is left, at least MIN_REPACK_S for a re-pack.
MILP_SHARE = 0.5
MIN_REPACK_S = 0.5


@dataclass
class Candidate:
    """One complete placement the planner may return."""

    method: str
    status: str
    cost: float
    decisions: list[CapsuleDecision]
    replicas: dict[PoolShape, int]
    model: Model | None = None  # the program it came from, for the report's sizes


@dataclass
class _Optimised:
    best: Candidate | None
    bound: float  # proven lower bound on any plan's cost (-inf: none proven)
    model: Model | None  # the class MILP, or the rounded program (explains infeasibility)
    infeasible: bool


def _rounded(
    types: list[CapsuleType],
    shapes: list[PoolShape],
    topology: Topology,
    *,
    time_limit: float,
    mip_rel_gap: float,
) -> tuple[Candidate, float] | None:
    """The fluid relaxation, rounded, then priced exactly (`fleet/fluid.py`), and its bound;
    None when the relaxation or the rounded plan finds no solution."""
    deadline = time.perf_counter() + time_limit
    bound, targets = relaxation_bound(
        types, shapes, topology, time_limit=0.4 * time_limit, mip_rel_gap=5 * mip_rel_gap
    )
    if not targets:
        return None
    fixed = solve_fixed_homes(
        types,
        round_homes(types, targets),
        shapes,
        topology,
        time_limit=max(deadline - time.perf_counter(), 1.0),
        mip_rel_gap=mip_rel_gap,
    )
    if fixed is None:
        return None
    status = "within gap" if fixed.cost - bound <= mip_rel_gap * fixed.cost else "rounded (see gap)"
    candidate = Candidate(
        "fluid-relaxation-rounding",
        status,
        fixed.cost,
        fixed.decisions,
        fixed.replicas,
        fixed.model,
    )
    return candidate, bound


def _optimise(
    classes: list[CapsuleClass],
    types: list[CapsuleType],
    shapes: list[PoolShape],
    topology: Topology,
    *,
    time_limit: float,
    mip_rel_gap: float,
    have_greedy: bool,
) -> _Optimised:
    """The class MILP, or the rounded relaxation above AGGREGATION_LIMIT classes; a MILP far
    from its bound (its limits are wall-clock: on a loaded machine 5 s can end it at a poor
    incumbent) is compared with the rounded relaxation, and either bound is a bound."""
    if len(classes) > AGGREGATION_LIMIT:
        rounded = _rounded(types, shapes, topology, time_limit=time_limit, mip_rel_gap=mip_rel_gap)
        if rounded is not None:
            return _Optimised(rounded[0], rounded[1], rounded[0].model, infeasible=False)
        if have_greedy:  # a MILP over thousands of classes would not do better in time
            return _Optimised(None, -math.inf, None, infeasible=False)
    model = build_model(classes, shapes, topology)
    deadline = time.perf_counter() + time_limit
    x, status, bound = solve_model(
        model, time_limit=MILP_SHARE * time_limit, mip_rel_gap=mip_rel_gap
    )
    if x is None:
        return _Optimised(None, -math.inf, model, infeasible=status == "infeasible")
    decisions, replicas = class_decisions(model, x)
    cost = float(np.dot(model.program.cost, x))
    best = Candidate("milp-highs", status, cost, decisions, replicas, model)
    if cost - bound > FALLBACK_GAP * cost:
        rounded = _rounded(
            types,
            shapes,
            topology,
            time_limit=max(deadline - time.perf_counter(), 1.0),
            mip_rel_gap=mip_rel_gap,
        )
        if rounded is not None:
            bound = max(bound, rounded[1])
            if rounded[0].cost < cost:
                best = rounded[0]
                best.method = f"fluid-relaxation-rounding (the MILP stopped at status {status!r})"
    return _Optimised(best, bound, model, infeasible=False)


def _greedy(
    classes: list[CapsuleClass], shapes: list[PoolShape], topology: Topology
) -> list[GreedyPlacement]:
    placements = []
    for rule in GREEDY_RULES:
        try:
            placements.append(greedy_placement(classes, shapes, topology, rule))
        except Infeasible:  # first fit can run out of room where a plan exists
            continue
    return placements


def plan(
    capsules: Sequence[Capsule],
    topology: Topology,
    phase: Phase,
    *,
    budget_per_hour: float | object | None = _UNSET,
    time_limit: float = 5.0,
    mip_rel_gap: float = 1e-3,
) -> Plan:
    """The cheapest placement of `capsules` on `topology` in `phase` (see the module
    docstring for how it is found).

    Raises `Infeasible` naming the capsules and the constraint when none exists: no admitted
    environment (sovereignty), quality above every tier, demand above the capacity, or a
    cost above the phase target (`budget_per_hour`, default: the playbook's, dev $5/hour).
    The solvers stop at a plan proven within `mip_rel_gap` of the optimum or after about
    `time_limit` seconds (all stages together, after the greedy) with the best plan found;
    `plan.solver` reports the bound and gap (`mip_rel_gap=0` asks for a proven optimum).
    """
    started = time.perf_counter()
    if phase not in PHASES:
        raise InvalidInput(f"unknown phase {phase!r}", field="phase", allowed=PHASES)
    if not capsules:
        raise InvalidInput("the fleet has no capsules", field="fleet")
    ids = [c.id for c in capsules]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InvalidInput(f"capsule id {twice[0]!r} appears twice", field="id")
    budget = phase_budget(phase) if budget_per_hour is _UNSET else budget_per_hour
    shapes = pool_shapes(topology, phase)
    classes = build_classes(capsules, topology, phase, shapes)
    types = capsule_types(classes)
    greedy = _greedy(classes, shapes, topology)
    deadline = time.perf_counter() + time_limit  # for the solvers, after the greedy
    optimised = _optimise(
        classes,
        types,
        shapes,
        topology,
        time_limit=time_limit,
        mip_rel_gap=mip_rel_gap,
        have_greedy=bool(greedy),
    )
    if optimised.infeasible and optimised.model is not None:
        from trifecta.fleet.infeasibility import explain_infeasible

        raise explain_infeasible(optimised.model, topology, phase)
    candidates = [optimised.best] if optimised.best is not None else []
    candidates += [
        Candidate(
            f"greedy-first-fit-{g.rule}", "heuristic", g.cost_per_hour, g.decisions, g.replicas
        )
        for g in greedy
    ]
    best_greedy = min(greedy, key=lambda g: g.cost_per_hour, default=None)
    best = optimised.best
    if best_greedy is not None and (
        best is None
        or best_greedy.cost_per_hour < best.cost
        or best.cost - optimised.bound > FALLBACK_GAP * best.cost
    ):
        repacked = repack(
            best_greedy.decisions,
            best_greedy.replicas,
            types,
            shapes,
            topology,
            time_limit=max(deadline - time.perf_counter(), MIN_REPACK_S),
            mip_rel_gap=mip_rel_gap,
        )
        if repacked is not None:
            candidates.append(
                Candidate(
                    f"greedy-first-fit-{best_greedy.rule}, re-packed by the MILP",
                    repacked.status,
                    repacked.cost,
                    repacked.decisions,
                    repacked.replicas,
                    repacked.model,
                )
            )
    if not candidates:
        raise Infeasible(
            f"the solver found no plan within its time limit of {time_limit:g} s "
            f"({len(classes)} capsule classes) and first fit ran out of room; allow more time",
            field="time_limit",
        )
    result_plan = _cheapest_verified(
        candidates, capsules, topology, phase, budget, optimised.bound, started, len(classes)
    )
    log.debug(
        "plan",
        phase=phase,
        capsules=len(capsules),
        classes=len(classes),
        method=result_plan.solver.method,
        cost_per_hour=round(result_plan.cost_per_hour, 2),
        seconds=round(result_plan.solver.seconds, 3),
    )
    if isinstance(budget, int | float) and result_plan.cost_per_hour > budget + 1e-9:
        costly = sorted(result_plan.assignments, key=lambda a: -a.cost_per_hour)
        raise Infeasible(
            f"the cheapest plan for {len(capsules)} capsules costs "
            f"${result_plan.cost_per_hour:,.2f}/hour, above the {phase} phase target of "
            f"${budget:,.2f}/hour; the costliest capsules are "
            f"{', '.join(a.capsule_id for a in costly[:3])}",
            field="phase",
        )
    return result_plan


def _cheapest_verified(
    candidates: list[Candidate],
    capsules: Sequence[Capsule],
    topology: Topology,
    phase: Phase,
    budget: float | object | None,
    bound: float,
    started: float,
    classes: int,
) -> Plan:
    """The cheapest candidate that passes `verify_plan`, as a `Plan` in the fleet's order."""
    position = {c.id: i for i, c in enumerate(capsules)}
    costs = {c.method: round(c.cost, 6) for c in candidates}
    problems: list[str] = []
    for candidate in sorted(candidates, key=lambda c: c.cost):
        program = candidate.model.program if candidate.model is not None else None
        report = SolverReport(
            method=candidate.method,
            status=candidate.status,
            seconds=time.perf_counter() - started,
            capsules=len(capsules),
            classes=classes,
            variables=len(program.cost) if program else 0,
            integer_variables=sum(program.integer) if program else 0,
            constraints=len(program.row_lower) if program else 0,
            lower_bound=bound if math.isfinite(bound) else None,
            mip_gap=(candidate.cost - bound) / candidate.cost
            if math.isfinite(bound) and candidate.cost > 0
            else None,
            candidates=costs,
        )
        decisions = sorted(candidate.decisions, key=lambda d: position[d.capsule.id])
        result = assemble_plan(
            decisions,
            candidate.replicas,
            topology,
            phase,
            report,
            budget if isinstance(budget, int | float) else None,
        )
        problems = verify_plan(result, capsules, topology)
        if not problems:
            return result
        log.warning(
            "plan candidate failed verification", method=candidate.method, problems=problems[:3]
        )
    raise TrifectaError(f"no candidate plan passed verification: {problems[0]}", field="plan")
