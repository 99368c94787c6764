"""Plans priced exactly once every capsule has a home: the last step of the rounded fluid
relaxation, and the re-pack of a greedy placement.

With each capsule's home (environment, tier) fixed, the capsules of one (type, home) sum
exactly (`fluid.fixed_classes`), and the class MILP over these few sums chooses the replicas
and the edge and generative flows. A greedy placement's own replicas and flows are one
solution of that program, and the solver starts from it (`Program.solve_from`), so re-packing
its homes costs no more than the greedy did even when the time limit cuts the search short:
it closes the partly filled replicas first fit leaves open and moves offload to where it is
cheapest.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trifecta.fleet.assemble import CapsuleDecision
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.class_milp import Model, build_model, replicas_of, solve_model
from trifecta.fleet.fluid import CapsuleType, Home, fixed_classes, fixed_decisions
from trifecta.fleet.pools import PoolShape
from trifecta.fleet.topology import Topology


@dataclass
class FixedHomesPlan:
    """A solved fixed-home program: its decisions, replicas and cost per hour."""

    model: Model
    decisions: list[CapsuleDecision]
    replicas: dict[PoolShape, int]
    cost: float
    status: str


def solve_fixed_homes(
    types: Sequence[CapsuleType],
    placed: Sequence[dict[Home, list[Capsule]]],
    shapes: list[PoolShape],
    topology: Topology,
    *,
    time_limit: float,
    mip_rel_gap: float,
    start: tuple[Sequence[CapsuleDecision], Mapping[PoolShape, int]] | None = None,
) -> FixedHomesPlan | None:
    """Replicas and flows for capsules whose homes are `placed` (per type, home -> capsules);
    None when the solver finds no solution in `time_limit`. With `start` (decisions and
    replicas homing every capsule as `placed` does) the solver begins from that plan."""
    model = build_model(fixed_classes(types, placed), shapes, topology)
    if start is None:
        x, status, _ = solve_model(model, time_limit=time_limit, mip_rel_gap=mip_rel_gap)
    else:
        solved = model.program.solve_from(
            _start_vector(model, *start), time_limit=time_limit, mip_rel_gap=mip_rel_gap
        )
        x = solved.x
        status = "optimal" if solved.status == 0 else "time limit (best found)"
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
    return FixedHomesPlan(model, decisions, replicas_of(model, x), cost, status)


def repack(
    decisions: Sequence[CapsuleDecision],
    replicas: Mapping[PoolShape, int],
    types: Sequence[CapsuleType],
    shapes: list[PoolShape],
    topology: Topology,
    *,
    time_limit: float,
    mip_rel_gap: float,
) -> FixedHomesPlan | None:
    """Keep the homes of `decisions` (a greedy's, with its `replicas`: the solver starts from
    that plan), re-choose everything else exactly."""
    started = time.perf_counter()
    type_of = {capsule.id: i for i, t in enumerate(types) for capsule in t.capsules}
    placed: list[dict[Home, list[Capsule]]] = [defaultdict(list) for _ in types]
    for decision in decisions:
        home = (decision.environment, decision.tier)
        placed[type_of[decision.capsule.id]][home].append(decision.capsule)
    return solve_fixed_homes(
        types,
        [dict(homes) for homes in placed],
        shapes,
        topology,
        time_limit=max(time_limit - (time.perf_counter() - started), 0.5),
        mip_rel_gap=mip_rel_gap,
        start=(decisions, replicas),
    )


def _start_vector(
    model: Model, decisions: Sequence[CapsuleDecision], replicas: Mapping[PoolShape, int]
) -> np.ndarray:
    """A placement written in the fixed-home program's columns (each class has one home)."""
    x = np.zeros(len(model.program.cost))
    by_id = {d.capsule.id: d for d in decisions}
    for c, cls in enumerate(model.classes):
        mine = [by_id[capsule.id] for capsule in cls.capsules]
        x[model.placed[(c, 0)]] = len(mine)
        if (c, 0) in model.offload:
            x[model.offload[(c, 0)]] = sum(sum(d.edge_tokens.values()) for d in mine)
        for env in cls.edges:
            if (c, env) in model.edge:
                x[model.edge[(c, env)]] = sum(d.edge_tokens.get(env, 0.0) for d in mine)
        for env in cls.generative_environments:
            if (c, env) in model.generative:
                x[model.generative[(c, env)]] = sum(d.generative_tokens.get(env, 0.0) for d in mine)
    index = {shape: s for s, shape in enumerate(model.shapes)}
    for shape, count in replicas.items():
        x[model.replicas[index[shape]]] = count
    return x
