"""Check a plan against its fleet and topology, independently of how it was made.

`verify_plan` re-derives every constraint from the plan's own numbers: each capsule placed
once, only where it is admitted (`Environment.admits`, hence `Capsule.allows`), on a tier that
meets its quality target, offloading no more than its light share; every pool group serving
no more than its replicas' capacity; no environment using more devices than it has. The
orchestrator can run it on a plan file before acting on it; the tests run it on every plan.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from trifecta.fleet.capsules import Capsule
from trifecta.fleet.plan_model import Plan
from trifecta.fleet.pools import CONTEXT_SERVICE, layer_models
from trifecta.fleet.topology import Topology

TOLERANCE = 1e-6


def verify_plan(plan: Plan, capsules: Sequence[Capsule], topology: Topology) -> list[str]:
    """Every constraint the plan breaks, as sentences (empty: the plan is valid)."""
    problems: list[str] = []
    generative_model, edge_model = layer_models()
    by_id = {c.id: c for c in capsules}
    seen: set[str] = set()
    envs = {e.name: e for e in topology.environments}
    load: dict[tuple[str, str, str], float] = defaultdict(float)

    for item in plan.assignments:
        capsule = by_id.get(item.capsule_id)
        if capsule is None:
            problems.append(f"{item.capsule_id}: not in the fleet")
            continue
        if item.capsule_id in seen:
            problems.append(f"{item.capsule_id}: placed twice")
        seen.add(item.capsule_id)
        for name in item.environments:
            env = envs.get(name)
            if env is None:
                problems.append(f"{capsule.id}: unknown environment {name}")
            elif not env.admits(capsule) or not capsule.allows(env):
                problems.append(f"{capsule.id}: sovereignty: {name} does not admit it")
            elif not env.available_in(plan.phase):
                problems.append(f"{capsule.id}: {name} does not serve in phase {plan.phase}")
        quality = topology.tier_quality.get(item.tier)
        if quality is None or quality < capsule.quality_target - TOLERANCE:
            problems.append(f"{capsule.id}: tier {item.tier} is below its quality target")
        demand = capsule.demand
        if item.edge_share > demand.light_share + TOLERANCE:
            problems.append(
                f"{capsule.id}: offloads {item.edge_share:.3f} of its tokens, "
                f"more than its light share {demand.light_share:g}"
            )
        generative = sum(item.generative_environments.values())
        if abs(generative - demand.generative_share) > TOLERANCE:
            problems.append(
                f"{capsule.id}: generative share {generative:.3f} served, "
                f"{demand.generative_share:g} asked"
            )
        tokens = demand.tokens_per_s
        load[(item.environment, "cognitive", item.tier)] += tokens * (
            1 - demand.generative_share - item.edge_share
        )
        load[(item.environment, "context", CONTEXT_SERVICE)] += demand.requests_per_s
        for name, share in item.edge_environments.items():
            load[(name, "edge", edge_model)] += tokens * share
        for name, share in item.generative_environments.items():
            load[(name, "generative", generative_model)] += tokens * share
    missing = set(by_id) - seen
    if missing:
        problems.append(f"{len(missing)} capsules are not placed: {', '.join(sorted(missing)[:5])}")

    capacity: dict[tuple[str, str, str], float] = defaultdict(float)
    devices: dict[tuple[str, str], int] = defaultdict(int)
    for pool in plan.pools:
        capacity[(pool.environment, pool.layer, pool.model)] += pool.replicas * (
            pool.capacity_per_replica
        )
        if pool.accelerator:
            devices[(pool.environment, pool.accelerator)] += pool.devices
    for group, needed in load.items():
        if needed > capacity[group] * (1 + TOLERANCE) + TOLERANCE:
            problems.append(
                f"capacity: {'/'.join(group)} serves {needed:.2f} with {capacity[group]:.2f}"
            )
    for (env_name, accelerator), used in devices.items():
        env = envs.get(env_name)
        have = env.devices(accelerator) if env else 0
        if used > have:
            problems.append(f"devices: {env_name} uses {used} {accelerator}, has {have}")
    total = sum(p.cost_per_hour for p in plan.pools)
    if abs(total - plan.cost_per_hour) > 1e-6 * max(1.0, total):
        problems.append(f"cost: pools add up to {total:.4f}, plan says {plan.cost_per_hour:.4f}")
    attributed = sum(a.cost_per_hour for a in plan.assignments)
    if abs(attributed - plan.cost_per_hour) > 1e-6 * max(1.0, total):
        problems.append(f"cost: capsules carry {attributed:.4f} of {plan.cost_per_hour:.4f}")
    return problems
