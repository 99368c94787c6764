"""The planner's mixed-integer program over capsule classes, solved by HiGHS
(`scipy.optimize.milp`), and the per-capsule decisions read from its solution.

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
that admit it (`Environment.admits`, i.e. `Capsule.allows`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trifecta.fleet.assemble import CapsuleDecision
from trifecta.fleet.classes import CapsuleClass
from trifecta.fleet.pools import PoolShape, layer_models
from trifecta.fleet.program import Program, add_pools
from trifecta.fleet.topology import Topology


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


def class_decisions(
    model: Model, x: np.ndarray
) -> tuple[list[CapsuleDecision], dict[PoolShape, int]]:
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
    return decisions, replicas_of(model, x)


def replicas_of(model: Model, x: np.ndarray) -> dict[PoolShape, int]:
    return {
        model.shapes[s]: round(x[col]) for s, col in model.replicas.items() if round(x[col]) > 0
    }


def dual_bound(result: Any) -> float:
    """HiGHS's proven lower bound (with a relative gap set, `fun` is only the incumbent)."""
    bound = getattr(result, "mip_dual_bound", None)
    return float(result.fun if bound is None or not math.isfinite(bound) else bound)


def solve_model(
    model: Model, *, time_limit: float, mip_rel_gap: float
) -> tuple[np.ndarray | None, str, float]:
    """Solve in up to three stages; returns (solution, status, lower bound on the cost).

    1. Capsule counts relaxed to fractions, replicas whole. Its optimum bounds the cost from
       below, and it is infeasible only if the real problem is. When its counts come out
       whole it is the answer, and stage 2 is skipped.
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
    bound = dual_bound(first)
    counts_x = first.x[sorted(counts)] if counts else np.zeros(0)
    if np.all(np.abs(counts_x - np.round(counts_x)) <= 1e-6):
        # Whole capsules already (always so when every class has one home, as in a re-pack
        # or a rounded plan): stage 1's solution is stage 2's.
        x = first.x.copy()
        x[sorted(counts)] = np.round(counts_x)
        best, best_cost = x, float(np.dot(program.cost, x))
    else:
        kept = {col: round(first.x[col]) for col in model.replicas.values()}
        second = program.solve(
            at_least=kept,
            time_limit=max(deadline - time.perf_counter(), 0.5),
            mip_rel_gap=mip_rel_gap,
        )
        best, best_cost = (
            (second.x, float(second.fun)) if second.x is not None else (None, math.inf)
        )

    def within(cost: float) -> bool:
        return cost - bound <= mip_rel_gap * max(cost, 1e-9) + 1e-9

    if not within(best_cost) and deadline - time.perf_counter() > 0.2:
        full = program.solve(time_limit=deadline - time.perf_counter(), mip_rel_gap=mip_rel_gap)
        if full.x is not None and float(full.fun) < best_cost - 1e-9:
            best, best_cost = full.x, float(full.fun)
        if full.x is not None:
            bound = max(bound, min(best_cost, dual_bound(full)))
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
