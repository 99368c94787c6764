"""The planner: place a fleet on a topology at the lowest cost per hour, as a mixed-integer
program solved by HiGHS (`scipy.optimize.milp`).

Decisions, per capsule class (`fleet/classes.py`):
  n[c, h]  integer  capsules of class c homed at h = (environment, checkpoint tier)
  o[c, h]  >= 0     tokens/s of those capsules' light requests offloaded to the edge
  w[c, k]  >= 0     tokens/s of class c served by the edge NPUs of environment k
  g[c, e]  >= 0     tokens/s of class c served by the generative model in environment e
and per replica shape s (`fleet/pools.py`: environment, layer, model, accelerator, tp degree):
  r[s]     integer  replicas
Minimise sum_s price_s * r_s subject to
  every capsule placed           sum_h n[c, h] = N_c
  offload only light requests    o[c, h] <= light_c * tokens_c * n[c, h]
  offload goes somewhere         sum_k w[c, k] = sum_h o[c, h]
  generative demand served       sum_e g[c, e] = generative_c * tokens_c * N_c
  capacity, per pool group       sum_{s in group} capacity_s r_s >= load on the group
  devices, per environment       sum_{s on accelerator a in env} tp_s r_s <= devices(env, a)
Sovereignty is in the variables themselves: a class gets variables only for the environments
that admit it (`Environment.admits`, i.e. `Capsule.allows`). The phase target (dev: under
$5/hour) is checked on the optimum: a plan under the target exists if and only if the
cheapest plan is under it, and checking afterwards lets the error say by how much it misses.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trifecta.core.errors import Infeasible, InvalidInput
from trifecta.core.logging import get_logger
from trifecta.core.settings import PHASES, Phase
from trifecta.fleet.assemble import CapsuleDecision, assemble_plan
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.classes import CapsuleClass, build_classes
from trifecta.fleet.costs import phase_budget
from trifecta.fleet.fluid import (
    capsule_types,
    fixed_classes,
    fixed_decisions,
    relaxation_bound,
    round_homes,
)
from trifecta.fleet.plan_model import Plan, SolverReport
from trifecta.fleet.pools import PoolShape, layer_models, pool_shapes
from trifecta.fleet.program import Program, add_pools
from trifecta.fleet.topology import Topology

log = get_logger(__name__)
_UNSET = object()
# Above this many classes the MILP no longer aggregates the fleet (continuous demand): plan
# by rounding the fluid relaxation instead (`fleet/fluid.py`).
AGGREGATION_LIMIT = 400
# A MILP plan further than this from its bound is compared with the rounded relaxation's.
FALLBACK_GAP = 0.02


@dataclass
class Model:
    """The program plus where each decision lives in it."""

    program: Program
    classes: list[CapsuleClass]
    shapes: list[PoolShape]
    placed: dict[tuple[int, int], int]  # (class, home index) -> n column
    offload: dict[tuple[int, int], int]  # (class, home index) -> o column
    edge: dict[tuple[int, str], int]  # (class, edge env) -> w column
    generative: dict[tuple[int, str], int]  # (class, env) -> g column
    replicas: dict[int, int]  # shape index -> r column
    place_rows: dict[int, int] = field(default_factory=dict)  # class -> "every capsule" row
    generative_rows: dict[int, int] = field(default_factory=dict)  # class -> its demand row
    device_rows: dict[tuple[str, str], int] = field(default_factory=dict)


def build_model(classes: list[CapsuleClass], shapes: list[PoolShape], topology: Topology) -> Model:
    program = Program()
    model = Model(program, classes, shapes, {}, {}, {}, {}, {})
    generative_model, edge_model = layer_models()
    group_terms: dict[tuple[str, str, str], list[tuple[int, float]]] = defaultdict(list)

    for c, cls in enumerate(classes):
        light = cls.light_share * cls.tokens_per_s
        for h, (env, tier) in enumerate(cls.homes):
            n = program.column(0.0, 0, cls.count, integer=True)
            model.placed[(c, h)] = n
            cloud = cls.tokens_per_s * (1 - cls.generative_share)
            group_terms[(env, "cognitive", tier)].append((n, -cloud))
            group_terms[(env, "context", "context-service")].append((n, -cls.requests_per_s))
            if cls.edges and light > 0:
                o = program.column(0.0, 0, light * cls.count, integer=False)
                model.offload[(c, h)] = o
                program.row([(o, 1.0), (n, -light)], -math.inf, 0.0)
                group_terms[(env, "cognitive", tier)].append((o, 1.0))
        model.place_rows[c] = program.row(
            [(model.placed[(c, h)], 1.0) for h in range(len(cls.homes))], cls.count, cls.count
        )
        if cls.edges and light > 0:
            for env in cls.edges:
                w = program.column(0.0, 0, light * cls.count, integer=False)
                model.edge[(c, env)] = w
                group_terms[(env, "edge", edge_model)].append((w, -1.0))
            program.row(
                [(model.edge[(c, e)], 1.0) for e in cls.edges]
                + [(model.offload[(c, h)], -1.0) for h in range(len(cls.homes))],
                0,
                0,
            )
        if cls.generative_share > 0:
            need = cls.generative_share * cls.tokens_per_s * cls.count
            for env in cls.generative_environments:
                g = program.column(0.0, 0, need, integer=False)
                model.generative[(c, env)] = g
                group_terms[(env, "generative", generative_model)].append((g, -1.0))
            model.generative_rows[c] = program.row(
                [(model.generative[(c, e)], 1.0) for e in cls.generative_environments], need, need
            )

    all_requests = sum(cls.requests_per_s * cls.count for cls in classes)
    model.replicas, model.device_rows = add_pools(
        program, shapes, topology, group_terms, all_requests
    )
    return model


def _decisions(model: Model, x: np.ndarray) -> tuple[list[CapsuleDecision], dict[PoolShape, int]]:
    """Per-capsule decisions from a class-level solution: the class's capsules are dealt to
    homes by the counts n, and its edge and generative flows are shared in proportion."""
    decisions: list[CapsuleDecision] = []
    for c, cls in enumerate(model.classes):
        counts = [round(x[model.placed[(c, h)]]) for h in range(len(cls.homes))]
        edges = [e for e in cls.edges if (c, e) in model.edge]  # none when nothing is light
        edge_total = sum(x[model.edge[(c, e)]] for e in edges)
        generative_total = cls.generative_share * cls.tokens_per_s
        capsules = iter(cls.capsules)
        for h, count in enumerate(counts):
            env, tier = cls.homes[h]
            has_offload = (c, h) in model.offload and count
            offloaded = x[model.offload[(c, h)]] / count if has_offload else 0.0
            for _ in range(count):
                edge_tokens = (
                    {e: offloaded * x[model.edge[(c, e)]] / edge_total for e in edges}
                    if edge_total > 1e-12
                    else {}
                )
                gen_need = cls.generative_share * cls.tokens_per_s * cls.count
                generative_tokens = (
                    {
                        e: generative_total * x[model.generative[(c, e)]] / gen_need
                        for e in cls.generative_environments
                    }
                    if cls.generative_share > 0
                    else {}
                )
                decisions.append(
                    CapsuleDecision(next(capsules), env, tier, edge_tokens, generative_tokens)
                )
    return decisions, _replicas(model, x)


def _replicas(model: Model, x: np.ndarray) -> dict[PoolShape, int]:
    return {
        model.shapes[s]: round(x[col]) for s, col in model.replicas.items() if round(x[col]) > 0
    }


def _dual_bound(result: Any) -> float:
    """HiGHS's proven lower bound (with a relative gap set, `fun` is only the incumbent)."""
    bound = getattr(result, "mip_dual_bound", None)
    return float(result.fun if bound is None or not math.isfinite(bound) else bound)


def _solve(
    model: Model, *, time_limit: float, mip_rel_gap: float
) -> tuple[np.ndarray | None, str, float]:
    """Solve in up to three stages; returns (solution, status, lower bound on the cost).

    1. Capsule counts relaxed to fractions, replicas whole. Its optimum bounds the cost from
       below, and it is infeasible only if the real problem is.
    2. The replicas of stage 1 kept (more may be added), whole capsules placed. The slack that
       whole replicas leave usually absorbs the rounding, so this costs what stage 1 did.
    3. Only if stage 2 fails or misses the gap while time is left: the full program.
    Identical capsules and interchangeable replica shapes make the program highly symmetric,
    which is what makes proving optimality slow; the stages keep the search on the replicas.
    """
    program = model.program
    deadline = time.perf_counter() + time_limit
    counts = set(model.placed.values())
    relaxed = [0 if col in counts else flag for col, flag in enumerate(program.integer)]
    first = program.solve(integer=relaxed, time_limit=0.7 * time_limit, mip_rel_gap=mip_rel_gap)
    if first.status == 2:
        return None, "infeasible", math.inf
    if first.x is None:
        return None, "time limit", math.inf
    bound = _dual_bound(first)
    kept = {col: round(first.x[col]) for col in model.replicas.values()}
    second = program.solve(
        at_least=kept, time_limit=max(deadline - time.perf_counter(), 0.5), mip_rel_gap=mip_rel_gap
    )
    best, best_cost = (second.x, float(second.fun)) if second.x is not None else (None, math.inf)

    def within(cost: float) -> bool:
        return cost - bound <= mip_rel_gap * max(cost, 1e-9) + 1e-9

    if not within(best_cost) and deadline - time.perf_counter() > 0.2:
        full = program.solve(time_limit=deadline - time.perf_counter(), mip_rel_gap=mip_rel_gap)
        if full.x is not None and float(full.fun) < best_cost - 1e-9:
            best, best_cost = full.x, float(full.fun)
        if full.x is not None:
            bound = max(bound, min(best_cost, _dual_bound(full)))
    if best is None:
        return None, "infeasible", bound
    status = (
        "optimal"
        if best_cost - bound <= 1e-6 * max(best_cost, 1.0)
        else "within gap"
        if within(best_cost)
        else "time limit (best found)"
    )
    return best, status, bound


def _plan_by_rounding(
    classes: list[CapsuleClass],
    shapes: list[PoolShape],
    topology: Topology,
    *,
    time_limit: float,
    mip_rel_gap: float,
) -> tuple[Model, np.ndarray, list[CapsuleDecision], str, float] | None:
    """The fluid relaxation, rounded, then priced exactly (`fleet/fluid.py`); None when the
    relaxation or the rounded plan finds no solution (the class MILP then decides)."""
    deadline = time.perf_counter() + time_limit
    types = capsule_types(classes)
    bound, targets = relaxation_bound(
        types, shapes, topology, time_limit=0.4 * time_limit, mip_rel_gap=5 * mip_rel_gap
    )
    if not targets:
        return None
    model = build_model(fixed_classes(types, round_homes(types, targets)), shapes, topology)
    x, status, _ = _solve(
        model, time_limit=max(deadline - time.perf_counter(), 1.0), mip_rel_gap=mip_rel_gap
    )
    if x is None:
        return None
    offload, edges, generative = [], [], []
    for c, cls in enumerate(model.classes):
        offload.append(float(x[model.offload[(c, 0)]]) if (c, 0) in model.offload else 0.0)
        flows = {e: float(x[model.edge[(c, e)]]) for e in cls.edges if (c, e) in model.edge}
        total = sum(flows.values())
        edges.append({e: v / total for e, v in flows.items()} if total > 1e-12 else {})
        gen = {
            e: float(x[model.generative[(c, e)]])
            for e in cls.generative_environments
            if (c, e) in model.generative
        }
        total = sum(gen.values())
        generative.append({e: v / total for e, v in gen.items()} if total > 1e-12 else {})
    decisions = fixed_decisions(model.classes, offload, edges, generative)
    cost = float(np.dot(model.program.cost, x))
    status = "within gap" if cost - bound <= mip_rel_gap * cost else "rounded (see gap)"
    return model, x, decisions, status, bound


def plan(
    capsules: Sequence[Capsule],
    topology: Topology,
    phase: Phase,
    *,
    budget_per_hour: float | object | None = _UNSET,
    time_limit: float = 5.0,
    mip_rel_gap: float = 1e-3,
) -> Plan:
    """The cheapest placement of `capsules` on `topology` in `phase`.

    Raises `Infeasible` naming the capsules and the constraint when none exists: no admitted
    environment (sovereignty), quality above every tier, demand above the capacity, or a
    cost above the phase target (`budget_per_hour`, default: the playbook's, dev $5/hour).
    The solver stops at a plan proven within `mip_rel_gap` of the optimum or after
    `time_limit` seconds with the best plan found; `plan.solver` reports the bound and gap
    (`mip_rel_gap=0` asks for a proven optimum).
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
    rounded = (
        _plan_by_rounding(classes, shapes, topology, time_limit=time_limit, mip_rel_gap=mip_rel_gap)
        if len(classes) > AGGREGATION_LIMIT
        else None
    )
    x: np.ndarray | None
    if rounded is not None:
        model, x, decisions, status, bound = rounded
        replicas = _replicas(model, x)
        method = "fluid-relaxation-rounding"
    else:
        model = build_model(classes, shapes, topology)
        x, status, bound = _solve(model, time_limit=time_limit, mip_rel_gap=mip_rel_gap)
        method = "milp-highs"
    program = model.program
    if x is None and status == "infeasible":
        from trifecta.fleet.infeasibility import explain_infeasible

        raise explain_infeasible(model, topology, phase)
    if x is None:
        raise Infeasible(
            f"the solver found no plan within its time limit of {time_limit:g} s "
            f"({len(classes)} capsule classes); allow more time",
            field="time_limit",
        )
    if rounded is None:
        decisions, replicas = _decisions(model, x)
    cost = float(np.dot(program.cost, x))
    if rounded is None and cost - bound > FALLBACK_GAP * cost:
        # The MILP stopped far from its bound (its limits are wall-clock: on a loaded machine
        # 5 s can end it at a poor incumbent); the rounded relaxation is small whatever the
        # fleet, and either bound is a bound.
        fallback = _plan_by_rounding(
            classes, shapes, topology, time_limit=time_limit, mip_rel_gap=mip_rel_gap
        )
        if fallback is not None:
            f_model, f_x, f_decisions, f_status, f_bound = fallback
            f_cost = float(np.dot(f_model.program.cost, f_x))
            bound = max(bound, f_bound)
            if f_cost < cost:
                model, x, decisions, cost = f_model, f_x, f_decisions, f_cost
                replicas, program = _replicas(model, x), model.program
                method = f"fluid-relaxation-rounding (the MILP stopped at status {status!r})"
                status = f_status
    report = SolverReport(
        method=method,
        status=status,
        seconds=time.perf_counter() - started,
        capsules=len(capsules),
        classes=len(classes),
        variables=len(program.cost),
        integer_variables=sum(program.integer),
        constraints=len(program.row_lower),
        lower_bound=bound,
        mip_gap=(cost - bound) / cost if cost > 0 else 0.0,
    )
    result_plan = assemble_plan(
        decisions,
        replicas,
        topology,
        phase,
        report,
        budget if isinstance(budget, int | float) else None,
    )
    log.debug(
        "plan",
        phase=phase,
        capsules=len(capsules),
        classes=len(classes),
        cost_per_hour=round(result_plan.cost_per_hour, 2),
        seconds=round(report.seconds, 3),
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
