"""The workload `trifecta run` serves: real tasks of the task family, drawn per capsule.

Each capsule's share of the requests follows its declared request rate; its light share
(`demand.light_share`) sets how many of its tasks are light (grades 1-2), the rest following
the default mix of the harder grades. A quarter of a capsule's requests re-ask one of its
standing queries (the telemetry questions a dashboard polls), which are the same from one
run to the next: what the response cache serves once their answers were verified.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import DEFAULT_MIX, LIGHT_MAX_DIFFICULTY, Task, generate_tasks
from trifecta.federation.rules import RuleBook
from trifecta.fleet.capsules import Capsule

STANDING_QUERIES = 6
REPEAT_SHARE = 0.25
RULE_SHARE = 0.15  # of a program-owning capsule's requests: rule queries on its program
RULE_VARIABLE = "who"  # the variable of generated one-variable rule queries


@dataclass(frozen=True)
class WorkItem:
    capsule_id: str
    task: Task


def capsule_mix(capsule: Capsule) -> dict[int, float]:
    """The grade mix of a capsule's traffic: its light share over grades 1-2, the rest over
    the harder grades, each group shaped like the default mix."""
    light = {g: w for g, w in DEFAULT_MIX.items() if g <= LIGHT_MAX_DIFFICULTY}
    heavy = {g: w for g, w in DEFAULT_MIX.items() if g > LIGHT_MAX_DIFFICULTY}
    share = capsule.demand.light_share
    mix = {g: share * w / sum(light.values()) for g, w in light.items()}
    mix.update({g: (1 - share) * w / sum(heavy.values()) for g, w in heavy.items()})
    return {g: w for g, w in mix.items() if w > 0}


def build_workload(capsules: Sequence[Capsule], requests: int, *, seed: int) -> list[WorkItem]:
    """`requests` work items across `capsules`, in arrival order (seeded)."""
    if requests < 1:
        raise InvalidInput("must be at least 1", field="requests")
    if not capsules:
        raise InvalidInput("the fleet has no capsules", field="fleet")
    rng = random.Random(seed)
    weights = [max(c.demand.requests_per_s, 1e-6) for c in capsules]
    picks = rng.choices(range(len(capsules)), weights=weights, k=requests)
    per_capsule = {i: picks.count(i) for i in set(picks)}
    fresh: dict[int, list[Task]] = {}
    standing: dict[int, list[Task]] = {}
    for i, count in per_capsule.items():
        capsule = capsules[i]
        mix = capsule_mix(capsule)
        # Standing queries depend on the capsule only, so every run asks the same ones.
        standing[i] = generate_tasks(
            STANDING_QUERIES,
            seed=_stable(capsule.id),
            split="heldout",
            difficulties=mix,
            domain=capsule.domain,
        )
        fresh[i] = generate_tasks(
            count,
            seed=seed * 1_000_003 + _stable(capsule.id),
            split="heldout",
            difficulties=mix,
            domain=capsule.domain,
        )
    items = []
    for i in picks:
        task = rng.choice(standing[i]) if rng.random() < REPEAT_SHARE else fresh[i].pop()
        program = capsules[i].program
        if program is not None and rng.random() < RULE_SHARE:
            task = rule_query(program, capsules[i].domain, rng)
        items.append(WorkItem(capsules[i].id, task))
    return items


def rule_query(program: str, domain: str, rng: random.Random) -> Task:
    """A query on a derived relation of the capsule's program: ground (`Downstream[v1, p3]?`,
    answered yes or no) or with one variable (`Sees[who, filter]?`, answered by the bindings)."""
    compiled = _rule_book().service(program).program
    derived = sorted({e.lhs for e in compiled.equations})
    name = rng.choice(derived)
    axes = compiled.tensors[name].domains
    free = rng.randrange(-1, len(axes))  # -1: a ground query
    args = [
        RULE_VARIABLE if k == free else rng.choice(compiled.domains[axis].symbols)
        for k, axis in enumerate(axes)
    ]
    prompt = f"{name}[{', '.join(args)}]?"
    return Task(
        id=f"rule-{_stable(prompt):x}",
        kind="rule",
        difficulty=0,
        prompt=prompt,
        answer="",
        domain=domain,
    )


@cache
def _rule_book() -> RuleBook:
    return RuleBook()


def _stable(text: str) -> int:
    """A seed from a string that is the same in every process (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")
