"""Planning fleets whose capsules do not aggregate: a fluid relaxation, rounded.

The MILP of `planner.py` is small because identical capsules form one class. When demand is
continuous (every capsule its own rate, length and shares) there are as many classes as
capsules and the MILP stalls (1,000 such capsules: 60% from its bound after 10 s). Here the
capsules are grouped by *type* instead: the same admissible homes, edge and generative
environments (sovereignty and quality decide these, not demand), and a band of light share;
a fleet has a few hundred at most.

1. Fluid relaxation. Per type, the summed cloud tokens and the summed requests may each be
   split over the type's homes independently, and offload is capped by the type's light
   tokens and, at each home, by the cloud tokens there times the largest light share of a
   member (types are banded by light share to keep this tight); replicas stay integer.
   Every real placement gives such a split, so the relaxation's proven lower bound is a
   lower bound on the true optimum.
2. Rounding. Each type's capsules fill the homes the relaxation uses up to its cloud tokens
   there, the capsules that can offload most going to the homes that offload most.
3. With every capsule's home fixed, capsules of one (type, home) sum exactly; the planner's
   MILP over these few sums gives the replicas and the flows.
The reported gap is the plan's cost against the bound of step 1.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trifecta.fleet.assemble import CapsuleDecision
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.classes import CapsuleClass
from trifecta.fleet.pools import PoolShape, layer_models
from trifecta.fleet.program import GroupTerms, Program, add_pools
from trifecta.fleet.topology import Topology

Home = tuple[str, str]  # (environment, tier)
LIGHT_BANDS = 10


@dataclass
class CapsuleType:
    homes: list[Home]
    edges: list[str]
    generative_environments: list[str]
    capsules: list[Capsule]

    def total(self, what: str) -> float:
        return sum(_loads(c)[what] for c in self.capsules)

    @property
    def light_ratio(self) -> float:
        """The most of its cloud tokens any member may offload."""
        return max(_light_ratio(c) for c in self.capsules)


def _loads(capsule: Capsule) -> dict[str, float]:
    d = capsule.demand
    return {
        "cloud": d.tokens_per_s * (1 - d.generative_share),
        "requests": d.requests_per_s,
        "light": d.light_share * d.tokens_per_s,
        "generative": d.generative_share * d.tokens_per_s,
    }


def capsule_types(classes: Sequence[CapsuleClass]) -> list[CapsuleType]:
    """Capsules grouped by where they may run and by how much of their load may go to the
    edge (in bands of LIGHT_BANDS): the band keeps the relaxation from offloading one
    capsule's light tokens from a home where another capsule's heavy ones run."""
    by_key: dict[tuple[object, ...], CapsuleType] = {}
    for cls in classes:
        for capsule in cls.capsules:
            band = min(int(_light_ratio(capsule) * LIGHT_BANDS), LIGHT_BANDS - 1)
            key = (tuple(cls.homes), tuple(cls.edges), tuple(cls.generative_environments), band)
            found = by_key.setdefault(
                key, CapsuleType(cls.homes, cls.edges, cls.generative_environments, [])
            )
            found.capsules.append(capsule)
    return list(by_key.values())


def relaxation_bound(
    types: Sequence[CapsuleType],
    shapes: Sequence[PoolShape],
    topology: Topology,
    *,
    time_limit: float,
    mip_rel_gap: float,
) -> tuple[float, list[dict[Home, tuple[float, float]]]]:
    """Step 1: (proven lower bound on the cost, per type and home the cloud tokens placed
    there and the light tokens offloaded from there)."""
    generative_model, edge_model = layer_models()
    program = Program()
    groups: GroupTerms = defaultdict(list)
    cloud_cols: list[dict[Home, tuple[int, int | None]]] = []
    for t in types:
        loads = [_loads(c) for c in t.capsules]
        cloud, requests = (sum(x[key] for x in loads) for key in ("cloud", "requests"))
        light, generative = (sum(x[key] for x in loads) for key in ("light", "generative"))
        ratio = t.light_ratio
        cols: dict[Home, tuple[int, int | None]] = {}
        request_cols, offload_cols = [], []
        for env, tier in t.homes:
            c = program.column(0.0, 0, cloud, integer=False)
            r = program.column(0.0, 0, requests, integer=False)
            cols[(env, tier)] = (c, None)
            request_cols.append(r)
            groups[(env, "cognitive", tier)].append((c, -1.0))
            groups[(env, "context", "context-service")].append((r, -1.0))
            if t.edges and light > 0:
                o = program.column(0.0, 0, light, integer=False)
                offload_cols.append(o)
                cols[(env, tier)] = (c, o)
                # offload <= the most any member placed here could offload
                program.row([(o, 1.0), (c, -ratio)], -math.inf, 0.0)
                groups[(env, "cognitive", tier)].append((o, 1.0))
        program.row([(c, 1.0) for c, _ in cols.values()], cloud, cloud)
        program.row([(r, 1.0) for r in request_cols], requests, requests)
        if offload_cols:
            edge_cols = [program.column(0.0, 0, light, integer=False) for _ in t.edges]
            for env, w in zip(t.edges, edge_cols, strict=True):
                groups[(env, "edge", edge_model)].append((w, -1.0))
            program.row([(o, 1.0) for o in offload_cols], 0.0, light)
            program.row([(w, 1.0) for w in edge_cols] + [(o, -1.0) for o in offload_cols], 0, 0)
        if generative > 0:
            gen_cols = [
                program.column(0.0, 0, generative, integer=False) for _ in t.generative_environments
            ]
            for env, g in zip(t.generative_environments, gen_cols, strict=True):
                groups[(env, "generative", generative_model)].append((g, -1.0))
            program.row([(g, 1.0) for g in gen_cols], generative, generative)
        cloud_cols.append(cols)
    all_requests = sum(t.total("requests") for t in types)
    add_pools(program, shapes, topology, groups, all_requests)
    result: Any = program.solve(time_limit=time_limit, mip_rel_gap=mip_rel_gap)
    if result.x is None:
        return math.inf, []
    bound = getattr(result, "mip_dual_bound", None)
    bound = float(result.fun if bound is None or not math.isfinite(bound) else bound)
    x = np.asarray(result.x)
    return bound, [
        {
            home: (float(x[c]), float(x[o]) if o is not None else 0.0)
            for home, (c, o) in cols.items()
        }
        for cols in cloud_cols
    ]


def round_homes(
    types: Sequence[CapsuleType], targets: Sequence[dict[Home, tuple[float, float]]]
) -> list[dict[Home, list[Capsule]]]:
    """Step 2: per type, the homes the relaxation uses, most offloaded (offload / cloud)
    first, are filled to their cloud tokens with the capsules of the highest light share
    first, so the homes that offload most get the capsules that can offload most. A capsule
    goes to the next home once the current one is more than half a capsule over its target."""
    placed: list[dict[Home, list[Capsule]]] = []
    for t, target in zip(types, targets, strict=True):
        used = [h for h in t.homes if target.get(h, (0.0, 0.0))[0] > 1e-9] or t.homes[:1]
        used.sort(key=lambda h: -target[h][1] / target[h][0] if target.get(h, (0, 0))[0] else 0)
        capsules = sorted(t.capsules, key=lambda c: -_light_ratio(c))
        homes: dict[Home, list[Capsule]] = defaultdict(list)
        at, filled = 0, 0.0
        for capsule in capsules:
            cloud = _loads(capsule)["cloud"]
            goal = target.get(used[at], (0.0, 0.0))[0]
            if at + 1 < len(used) and filled + cloud / 2 > goal:
                at, filled = at + 1, 0.0
            homes[used[at]].append(capsule)
            filled += cloud
        placed.append(dict(homes))
    return placed


def _light_ratio(capsule: Capsule) -> float:
    loads = _loads(capsule)
    return loads["light"] / loads["cloud"] if loads["cloud"] > 0 else 0.0


def fixed_classes(
    types: Sequence[CapsuleType], placed: Sequence[dict[Home, list[Capsule]]]
) -> list[CapsuleClass]:
    """Step 3's input: one class per (type, home) with the mean demand of the capsules placed
    there (the program multiplies it by their count), so it prices exactly their loads."""
    out: list[CapsuleClass] = []
    for t, homes in zip(types, placed, strict=True):
        for home, capsules in homes.items():
            loads = [_loads(c) for c in capsules]
            sums = {key: sum(x[key] for x in loads) for key in loads[0]}
            tokens = sum(c.demand.tokens_per_s for c in capsules)
            out.append(
                CapsuleClass(
                    kind=capsules[0].kind,
                    capsules=capsules,
                    requests_per_s=sums["requests"] / len(capsules),
                    tokens_per_s=tokens / len(capsules),
                    light_share=sums["light"] / tokens if tokens > 0 else 0.0,
                    generative_share=sums["generative"] / tokens if tokens > 0 else 0.0,
                    homes=[home],
                    edges=t.edges,
                    generative_environments=t.generative_environments,
                )
            )
    return out


def fixed_decisions(
    classes: Sequence[CapsuleClass],
    offload: Sequence[float],
    edge_split: Sequence[dict[str, float]],
    generative_split: Sequence[dict[str, float]],
) -> list[CapsuleDecision]:
    """Per-capsule decisions from step 3: a (type, home) class's offloaded tokens are shared
    by its capsules in proportion to their light tokens, its edge and generative flows in
    the proportions the program chose."""
    decisions = []
    for cls, offloaded, edges, generative in zip(
        classes, offload, edge_split, generative_split, strict=True
    ):
        env, tier = cls.homes[0]
        light_total = sum(_loads(c)["light"] for c in cls.capsules)
        for capsule in cls.capsules:
            loads = _loads(capsule)
            mine = offloaded * loads["light"] / light_total if light_total > 0 else 0.0
            decisions.append(
                CapsuleDecision(
                    capsule,
                    env,
                    tier,
                    {e: mine * share for e, share in edges.items()} if mine > 1e-12 else {},
                    {e: loads["generative"] * share for e, share in generative.items()}
                    if loads["generative"] > 0
                    else {},
                )
            )
    return decisions
