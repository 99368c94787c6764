"""Sovereignty, by property: over random topologies, capsules and environment failures, a
capsule's request, context and memories are never served by an environment that does not admit
it (its allowed set, and the site's `reserved_for`), by any route, fallback included; when no
admitting environment can serve, the request is refused with a clear error instead. Checked
from the receiving side: each environment's own record of what it served."""

from __future__ import annotations

import itertools
import random
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.orchestrator.conftest import StackFactory
from trifecta.core.errors import Infeasible, SovereigntyViolation, Unavailable
from trifecta.core.tasks import generate_tasks
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import Topology, parse_topology
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import TaskRequest
from trifecta.orchestrator.stack import Stack

JURISDICTIONS = ("eu", "us", "apac")
_ids = itertools.count()


def random_topology(seed: int) -> Topology:
    """Cloud, sovereign and edge environments in random jurisdictions."""
    rng = random.Random(seed)
    envs: list[dict[str, object]] = [  # parsed YAML, as parse_topology reads it
        {
            "name": "inference",
            "kind": "inference",
            "provider": "aws",
            "region": "us-east-1",
            "nodes": [{"name": "gpus", "accelerator": "a100-40gb", "count": 8}],
        }
    ]
    for i in range(rng.randint(1, 2)):
        j = rng.choice(JURISDICTIONS)
        envs.append(
            {
                "name": f"sov-{i}-{j}",
                "kind": "sovereign",
                "provider": "on-prem",
                "region": j,
                "jurisdiction": j,
                "reserved_for": ["sovereign"],
                "nodes": [{"name": "gpus", "accelerator": "rtx-5090", "count": 4}],
            }
        )
    for i in range(rng.randint(1, 3)):
        within = rng.choice((None, *JURISDICTIONS))  # None: an edge site bound to no law
        envs.append(
            {
                "name": f"edge-{i}-{within or 'any'}",
                "kind": "edge",
                "provider": "mesh",
                "region": within or "global",
                "jurisdiction": within,
                "nodes": [{"name": "npus", "accelerator": "coral-npu", "count": 20}],
            }
        )
    return parse_topology({"name": f"random-{seed}", "environments": envs})


@pytest.fixture(scope="module")
def stacks(make_stack: StackFactory) -> list[Stack]:
    base = [Capsule(id="base", name="base", kind="digital_twin", domain="base")]
    return [make_stack(base, random_topology(seed)) for seed in range(3)]


@cache
def _prompts() -> list[str]:
    return [t.prompt for t in generate_tasks(40, seed=11, split="heldout")]


capsules = st.builds(
    lambda sovereign, jurisdiction, allowed: (sovereign, jurisdiction, allowed),
    st.booleans(),
    st.sampled_from(JURISDICTIONS),
    st.one_of(
        st.none(),
        st.lists(
            st.sampled_from(["inference", "sovereign", "edge", "local"]),
            min_size=1,
            max_size=3,
            unique=True,
        ),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, 2),
    spec=capsules,
    down_seed=st.integers(0, 10_000),
    prompt=st.integers(0, 39),
)
def test_no_route_leaves_the_allowed_environments(
    stacks: list[Stack], which: int, spec: tuple, down_seed: int, prompt: int
) -> None:
    stack = stacks[which]
    sovereign, jurisdiction, allowed = spec
    n = next(_ids)
    capsule = Capsule(
        id=f"prop-{n}",
        name="p",
        kind="sovereign" if sovereign else "digital_twin",
        domain=f"prop-{n}",
        jurisdiction=jurisdiction if sovereign else None,
        allowed_environments=allowed,
    )
    stack.add_capsule(capsule)
    rng = random.Random(down_seed)
    names = [e.name for e in stack.topology.environments]
    down = {name for name in names if rng.random() < 0.3}
    for name in names:
        stack.bridge.set_fault(name, down=name in down)
    try:
        result = Orchestrator(stack.parts, run_id="prop").serve(
            capsule.id, TaskRequest(prompt=_prompts()[prompt])
        )
    except (SovereigntyViolation, Unavailable, Infeasible) as refused:
        assert refused.one_line()  # a clear, named refusal
        result = None
    finally:
        for name in names:
            stack.bridge.set_fault(name, down=False)
    for env in stack.topology.environments:
        records = [r for r in stack.bridge.served(env.name) if r.capsule_id == capsule.id]
        assert all(r.ok for r in records), records  # never even asked to serve it wrongly
        if records:
            assert env.admits(capsule), (capsule, env.name, records)
            assert env.name not in down
    if result is not None:
        assert result.environment is not None and result.environment not in down
        assert stack.topology.environment(result.environment).admits(capsule)
        placed = stack.shards.shard_map.get(capsule.domain)
        assert placed is not None and placed[1] is not None and capsule.allows(placed[1])
        for hop in result.hops:
            assert stack.topology.environment(hop.environment).admits(capsule)
