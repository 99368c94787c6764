"""Outcome feedback reaches the generative router through the context layer: the loop records
each generative answer's trajectory there, and the router's outcome rule reads the verdicts
back from the context layer's memories, with the experts each answer used (not from the
loop's verifier directly)."""

from __future__ import annotations

import pytest
import torch

from trifecta.context.models import MemoryItem, MemoryQuery, MemorySource
from trifecta.core.tasks import generate_tasks
from trifecta.fleet.capsules import Capsule, Demand
from trifecta.generative.tuning import feedback_update
from trifecta.orchestrator.generative_outcomes import (
    MEMORY_QUERY,
    ROUTE_MARK,
    usage_of,
    usage_text,
)
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import TaskRequest
from trifecta.orchestrator.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TWIN = Capsule(
    id="outcome-twin",
    name="Outcome twin",
    kind="digital_twin",
    domain="outcome-grid",
    demand=Demand(requests_per_s=1, light_share=0.0, generative_share=1.0),
)


@pytest.fixture(scope="module", autouse=True)
def twin(stack: Stack) -> Capsule:
    return stack.add_capsule(TWIN)


def test_verdicts_tune_the_router_once_the_context_layer_has_recorded_them(stack: Stack) -> None:
    generative, context = stack.generative, stack.context
    assert generative is not None and context is not None
    orchestrator = Orchestrator(stack.parts, run_id="outcomes")
    tasks = generate_tasks(4, seed=11, split="heldout", difficulties=[3], domain=TWIN.domain)
    results = []
    for task in tasks:
        context.drain(30)  # let the context layer learn each trajectory before the next request
        results.append(orchestrator.serve(TWIN.id, TaskRequest(prompt=task.prompt)))
    assert all(r.route == "generative" and r.verified is not None for r in results)
    history = generative.store.bias_history(TWIN.id)
    feedback = [v for v in history if v.reason.startswith("feedback")]
    # Each request settled the outcome of the one before it, recorded by then in the context
    # layer; the last one's trajectory reached the context layer after its own settle.
    assert [v.reason == "feedback: success" for v in feedback] == [r.verified for r in results[:-1]]

    # The context layer's memories of these answers carry the experts each used.
    found = context.search_memories(TWIN.id, MemoryQuery(query=MEMORY_QUERY, k=20))
    memories = [h.memory for h in found.hits if ROUTE_MARK in h.memory.title]
    assert sum(m.reinforced + 1 for m in memories) == len(tasks) - 1
    assert all(usage_of(m) is not None for m in memories)

    # Once the context layer has recorded the last outcome, settling applies the rule once.
    assert context.drain(30)
    served_in = results[-1].environment
    assert served_in is not None, "a generative answer names the environment that produced it"
    before = generative.store.current_bias(TWIN.id, generative.shape).tensor()
    applied = orchestrator.generative_outcomes.settle(
        TWIN.id,
        stack.bridge.context(stack.capsule(TWIN.id), stack.shards.place(TWIN.domain)),
        stack.bridge.generative(stack.capsule(TWIN.id), served_in),
    )
    assert applied == 1
    after = generative.store.current_bias(TWIN.id, generative.shape)
    verdict = bool(results[-1].verified)
    assert after.reason == ("feedback: success" if verdict else "feedback: failure")
    found = context.search_memories(TWIN.id, MemoryQuery(query=MEMORY_QUERY, k=20))
    candidates = [
        feedback_update(
            before, torch.tensor(usage, dtype=torch.float32), verdict, generative.tuning
        )
        for h in found.hits
        if (usage := usage_of(h.memory)) is not None
        and h.memory.outcome == ("success" if verdict else "failure")
    ]
    # (the store keeps biases to 6 decimals)
    assert any(torch.allclose(after.tensor(), c, atol=2e-6) for c in candidates)
    # Nothing is applied twice.
    assert (
        orchestrator.generative_outcomes.settle(
            TWIN.id,
            stack.bridge.context(stack.capsule(TWIN.id), stack.shards.place(TWIN.domain)),
            stack.bridge.generative(stack.capsule(TWIN.id), served_in),
        )
        == 0
    )


def test_a_memory_records_the_experts_an_answer_used() -> None:
    load = [[3, 0, 12, 1, 0, 0, 7, 2], [0, 9, 9, 0, 4, 0, 1, 2]]
    memory = MemoryItem(
        id="mem-1",
        domain="d",
        title="lookup_add failed via generative/rnd1-30b-a3b",
        description="",
        content=f"Task: a?\nVerdict: expected 5; {usage_text(load)}\nPath: generative",
        outcome="failure",
        source=MemorySource(),
        created_at=0.0,
        updated_at=0.0,
    )
    assert usage_of(memory) == load


def test_a_grade_with_a_learnt_generative_advantage_is_routed_there(stack: Stack) -> None:
    """A capsule that declares no generative share: its heavy tasks go to the cascade, until
    the outcomes say the generative layer is better at a grade (planted here)."""
    capsule = stack.add_capsule(
        Capsule(id="route-twin", name="r", kind="digital_twin", domain="route-grid")
    )
    orchestrator = Orchestrator(stack.parts, run_id="routes")
    rule = orchestrator.generative_routes
    for _ in range(30):
        rule.observe(capsule.id, 4, "generative", True)
        rule.observe(capsule.id, 4, "cognitive", False)
    grade4, grade5 = (
        generate_tasks(1, seed=13, split="heldout", difficulties=[g], domain=capsule.domain)[0]
        for g in (4, 5)
    )
    routed = orchestrator.serve(capsule.id, TaskRequest(prompt=grade4.prompt))
    assert routed.route == "generative"
    assert orchestrator.serve(capsule.id, TaskRequest(prompt=grade5.prompt)).route == "cognitive"
    # Both verdicts were counted for their layer and grade.
    assert rule.evidence(capsule.id, 4).generative.trials == 31
    assert rule.evidence(capsule.id, 5).cognitive.trials == 1
