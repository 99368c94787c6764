"""Capsule classes: capsules with identical requirements, planned as one.

Two capsules belong to the same class when the same environments admit them (sovereignty,
reservations), the same checkpoint tiers meet their quality target, and their demand is the
same. The planner then decides how many of a class's capsules go where, so its size grows with
the number of distinct requirements, not with the number of capsules.

Requirements that no environment can meet are found here, before any solver runs, and
reported with the capsules and the constraint they break.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from trifecta.core.errors import Infeasible
from trifecta.core.settings import Phase
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.pools import PoolShape, layer_models
from trifecta.fleet.topology import Topology


@dataclass
class CapsuleClass:
    kind: str
    capsules: list[Capsule]
    requests_per_s: float  # per capsule
    tokens_per_s: float  # per capsule
    light_share: float
    generative_share: float
    homes: list[tuple[str, str]]  # (environment, tier) where its cognitive tier may run
    edges: list[str]  # environments whose NPUs may serve its light requests
    generative_environments: list[str]

    @property
    def count(self) -> int:
        return len(self.capsules)


def describe(capsules: Sequence[Capsule], limit: int = 5) -> str:
    """`a, b, c and 4 more` for messages."""
    ids = [c.id for c in capsules]
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _where(capsule: Capsule) -> str:
    if capsule.sovereign:
        return (
            f"sovereign capsules may run only in sovereign or edge environments in "
            f"jurisdiction {capsule.jurisdiction!r}"
        )
    if capsule.allowed_environments is not None:
        return f"they allow only {', '.join(capsule.allowed_environments)}"
    return "they may run anywhere"


def build_classes(
    capsules: Sequence[Capsule], topology: Topology, phase: Phase, shapes: Sequence[PoolShape]
) -> list[CapsuleClass]:
    """Group `capsules` into classes, or raise `Infeasible` naming the capsules that no
    environment can serve and the constraint that stops them."""
    generative_model, edge_model = layer_models()
    groups = {s.group for s in shapes}
    environments = topology.serving_environments(phase)
    admitted: dict[tuple[str, str | None, tuple[str, ...]], list[str]] = {}
    failures: dict[tuple[str, str], list[Capsule]] = defaultdict(list)
    classes: dict[tuple[object, ...], CapsuleClass] = {}
    best_tier = max(topology.tier_quality.items(), key=lambda item: item[1])

    for capsule in capsules:
        signature = (capsule.kind, capsule.jurisdiction, tuple(capsule.allowed_environments or ()))
        if signature not in admitted:
            admitted[signature] = [e.name for e in environments if e.admits(capsule)]
        places = admitted[signature]
        tiers = [t for t, q in topology.tier_quality.items() if q >= capsule.quality_target - 1e-9]
        if not tiers:
            failures[
                (
                    "quality_target",
                    f"quality_target {capsule.quality_target:g} is above every cognitive "
                    f"tier (best: {best_tier[0]} at {best_tier[1]:g})",
                )
            ].append(capsule)
            continue
        homes = [(e, t) for e in places for t in tiers if (e, "cognitive", t) in groups]
        if not homes:
            if not places:
                failures[
                    (
                        "sovereignty",
                        f"no environment admits them in phase {phase} ({_where(capsule)})",
                    )
                ].append(capsule)
            else:
                failures[
                    (
                        "capacity",
                        f"no environment they may use ({', '.join(places)}) has "
                        f"GPUs that hold tier {' or '.join(tiers)} in phase {phase}",
                    )
                ].append(capsule)
            continue
        demand = capsule.demand
        generative_envs = (
            [e for e in places if (e, "generative", generative_model) in groups]
            if demand.generative_share > 0
            else []
        )
        if demand.generative_share > 0 and not generative_envs:
            failures[
                (
                    "generative_share",
                    f"no environment they may use ({', '.join(places)}) has GPUs that hold the "
                    f"generative model {generative_model} in phase {phase}",
                )
            ].append(capsule)
            continue
        edges = (
            [e for e in places if (e, "edge", edge_model) in groups]
            if demand.light_share > 0
            else []
        )
        key = (
            capsule.kind,
            tuple(homes),
            tuple(edges),
            tuple(generative_envs),
            demand.requests_per_s,
            demand.tokens_per_request,
            demand.light_share,
            demand.generative_share,
        )
        found = classes.get(key)
        if found is None:
            classes[key] = CapsuleClass(
                kind=capsule.kind,
                capsules=[capsule],
                requests_per_s=demand.requests_per_s,
                tokens_per_s=demand.tokens_per_s,
                light_share=demand.light_share,
                generative_share=demand.generative_share,
                homes=homes,
                edges=edges,
                generative_environments=generative_envs,
            )
        else:
            found.capsules.append(capsule)

    if failures:
        (field, reason), failing = next(iter(failures.items()))
        others = sum(len(v) for v in failures.values()) - len(failing)
        extra = f"; {others} more capsules fail other constraints" if others else ""
        raise Infeasible(f"capsules {describe(failing)}: {reason}{extra}", field=field)
    return list(classes.values())
