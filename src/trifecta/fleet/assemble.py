"""From placement decisions to a `Plan`: pool loads, per-capsule costs, roll-ups.

Both the MILP planner and the greedy baseline decide, for each capsule, its home environment
and tier and where its edge and generative tokens go, and for each replica shape how many
replicas run. This module turns that into the same `Plan`, so costs are accounted one way.
A pool's cost is shared among the capsules it serves in proportion to the load each puts on
it (tokens/s; requests/s for the context layer).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trifecta.core.settings import Phase
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.costs import HOURS_PER_MONTH, capsule_month_price
from trifecta.fleet.plan_model import (
    CapsuleAssignment,
    EnvironmentSummary,
    KindSummary,
    Plan,
    PoolAllocation,
    SolverReport,
)
from trifecta.fleet.pools import CONTEXT_SERVICE, PoolShape, layer_models
from trifecta.fleet.topology import Topology

Group = tuple[str, str, str]  # (environment, layer, model)


@dataclass
class CapsuleDecision:
    capsule: Capsule
    environment: str
    tier: str
    edge_tokens: dict[str, float] = field(default_factory=dict)  # environment -> tokens/s
    generative_tokens: dict[str, float] = field(default_factory=dict)

    def loads(self, generative_model: str, edge_model: str) -> dict[Group, float]:
        """The load this capsule puts on each pool group."""
        demand = self.capsule.demand
        offloaded = sum(self.edge_tokens.values())
        loads: dict[Group, float] = {
            (self.environment, "cognitive", self.tier): max(
                0.0, demand.tokens_per_s * (1 - demand.generative_share) - offloaded
            ),
            (self.environment, "context", CONTEXT_SERVICE): demand.requests_per_s,
        }
        for env, tokens in self.edge_tokens.items():
            loads[(env, "edge", edge_model)] = loads.get((env, "edge", edge_model), 0.0) + tokens
        for env, tokens in self.generative_tokens.items():
            key = (env, "generative", generative_model)
            loads[key] = loads.get(key, 0.0) + tokens
        return loads


def assemble_plan(
    decisions: Sequence[CapsuleDecision],
    replicas: Mapping[PoolShape, int],
    topology: Topology,
    phase: Phase,
    solver: SolverReport,
    budget_per_hour: float | None,
) -> Plan:
    generative_model, edge_model = layer_models()
    capsule_loads = [d.loads(generative_model, edge_model) for d in decisions]
    group_load: dict[Group, float] = defaultdict(float)
    for loads in capsule_loads:
        for group, load in loads.items():
            group_load[group] += load
    group_cost: dict[Group, float] = defaultdict(float)
    group_capacity: dict[Group, float] = defaultdict(float)
    for shape, count in replicas.items():
        group_cost[shape.group] += count * shape.price
        group_capacity[shape.group] += count * shape.capacity

    pools = [
        PoolAllocation(
            environment=shape.environment,
            layer=shape.layer,
            model=shape.model,
            accelerator=shape.accelerator,
            tp_degree=shape.tp,
            batch=shape.batch,
            replicas=count,
            capacity_per_replica=shape.capacity,
            # spread a group's load over its shapes in proportion to their capacity
            load=group_load.get(shape.group, 0.0)
            * count
            * shape.capacity
            / group_capacity[shape.group],
            price_per_replica_hour=shape.price,
            cost_per_hour=count * shape.price,
        )
        for shape, count in sorted(replicas.items(), key=lambda item: _shape_order(item[0]))
        if count > 0
    ]
    total = sum(p.cost_per_hour for p in pools)
    # Cost of replicas that serve no load (none in an optimal plan) is shared by token volume.
    idle = sum(cost for group, cost in group_cost.items() if group_load.get(group, 0.0) <= 0)
    all_tokens = sum(d.capsule.demand.tokens_per_s for d in decisions) or 1.0

    accelerators: dict[Group, list[str]] = defaultdict(list)
    for pool in pools:
        group = (pool.environment, pool.layer, pool.model)
        if pool.accelerator and pool.accelerator not in accelerators[group]:
            accelerators[group].append(pool.accelerator)

    assignments = []
    for decision, loads in zip(decisions, capsule_loads, strict=True):
        capsule = decision.capsule
        cost = idle * capsule.demand.tokens_per_s / all_tokens
        for group, load in loads.items():
            if load > 0 and group_load[group] > 0:
                cost += group_cost.get(group, 0.0) * load / group_load[group]
        tokens = capsule.demand.tokens_per_s
        assignments.append(
            CapsuleAssignment(
                capsule_id=capsule.id,
                kind=capsule.kind,
                domain=capsule.domain,
                environment=decision.environment,
                tier=decision.tier,
                accelerators=accelerators[(decision.environment, "cognitive", decision.tier)],
                tokens_per_s=tokens,
                edge_share=sum(decision.edge_tokens.values()) / tokens if tokens else 0.0,
                edge_environments={e: v / tokens for e, v in decision.edge_tokens.items() if v > 0},
                generative_environments={
                    e: v / tokens for e, v in decision.generative_tokens.items() if v > 0
                },
                cost_per_hour=cost,
                cost_per_month=cost * HOURS_PER_MONTH,
            )
        )

    return Plan(
        phase=phase,
        topology=topology.name,
        cost_per_hour=total,
        cost_per_month=total * HOURS_PER_MONTH,
        budget_per_hour=budget_per_hour,
        hours_per_month=HOURS_PER_MONTH,
        pools=pools,
        environments=_environment_summaries(pools, assignments, topology),
        kinds=_kind_summaries(assignments, phase),
        tiers=_tier_counts(assignments, topology),
        assignments=assignments,
        solver=solver,
    )


def _shape_order(shape: PoolShape) -> tuple[str, int, str, str, int]:
    layer_rank = {"cognitive": 0, "generative": 1, "edge": 2, "context": 3}[shape.layer]
    return (shape.environment, layer_rank, shape.model, shape.accelerator or "", shape.tp)


def _environment_summaries(
    pools: Sequence[PoolAllocation], assignments: Sequence[CapsuleAssignment], topology: Topology
) -> list[EnvironmentSummary]:
    homed: dict[str, int] = defaultdict(int)
    for item in assignments:
        homed[item.environment] += 1
    summaries = []
    for env in topology.environments:
        mine = [p for p in pools if p.environment == env.name]
        if not mine and not homed[env.name]:
            continue
        devices: dict[str, int] = defaultdict(int)
        for pool in mine:
            if pool.accelerator:
                devices[pool.accelerator] += pool.devices
        summaries.append(
            EnvironmentSummary(
                environment=env.name,
                kind=env.kind,
                jurisdiction=env.jurisdiction,
                capsules=homed[env.name],
                devices=dict(devices),
                context_replicas=sum(p.replicas for p in mine if p.layer == "context"),
                cost_per_hour=sum(p.cost_per_hour for p in mine),
            )
        )
    return summaries


def _kind_summaries(assignments: Sequence[CapsuleAssignment], phase: Phase) -> list[KindSummary]:
    by_kind: dict[str, list[CapsuleAssignment]] = defaultdict(list)
    for item in assignments:
        by_kind[item.kind].append(item)
    summaries = []
    for kind, items in sorted(by_kind.items()):
        cost = sum(i.cost_per_hour for i in items)
        summaries.append(
            KindSummary(
                kind=kind,
                capsules=len(items),
                cost_per_hour=cost,
                cost_per_capsule_month=cost * HOURS_PER_MONTH / len(items),
                playbook_capsule_month=capsule_month_price(kind, phase),
            )
        )
    return summaries


def _tier_counts(assignments: Sequence[CapsuleAssignment], topology: Topology) -> dict[str, int]:
    counts = dict.fromkeys(topology.tier_quality, 0)
    for item in assignments:
        counts[item.tier] = counts.get(item.tier, 0) + 1
    return counts
