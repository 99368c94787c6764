"""The ACE roles and ReasoningBank extraction without a language model: they run on the
outcome signal and structured fields, invent no text, and say so."""

from __future__ import annotations

import pytest

from trifecta.context.deltas import AddOp, Delta, TagOp
from trifecta.context.facade import ContextService
from trifecta.context.memory import MemoryExtractor, memory_id_for, structured_draft
from trifecta.context.merge import bullet_id_for
from trifecta.context.models import MemoryQuery, RetrieveRequest
from trifecta.context.prompts import first_json
from trifecta.context.roles import Curator, Generator, Reflector
from trifecta.context.trajectory import Trajectory, TrajectoryStep

STEPS = [
    TrajectoryStep(layer="edge", tier="node-3", mean_entropy=1.4, escalated=True, answer="55"),
    TrajectoryStep(layer="cognitive", tier="large", mean_entropy=0.2, answer="58"),
]


def trajectory(outcome: str, bullets: list[str], **extra: object) -> Trajectory:
    return Trajectory.model_validate(
        {
            "id": f"traj-{outcome}",
            "capsule_id": "twin-a",
            "prompt": "41+17?",
            "answer": "58",
            "outcome": outcome,
            "judge": "verifier",
            "task_kind": "add",
            "steps": STEPS,
            "bullet_ids": bullets,
            **extra,
        }
    )


def seed(service: ContextService) -> list[str]:
    result = service.apply_delta(
        "twin-a",
        Delta(
            ops=[
                AddOp(op_id="r1", section="strategies", content="Add the two operands."),
                AddOp(op_id="r2", section="routing", content="Escalate when the edge is unsure."),
            ]
        ),
    )
    return result.added


def test_reflector_and_curator_tag_from_the_outcome(service: ContextService) -> None:
    used = seed(service)
    bullets = {b.id: b for b in service.playbook("twin-a").bullets}
    for outcome, tag in (("success", "helpful"), ("failure", "harmful")):
        t = trajectory(outcome, [*used, "zzz-0000"])
        reflection = Reflector(None).reflect(t, bullets)
        assert reflection.mode == "outcome_signal" and reflection.insights == []
        assert [(x.bullet_id, x.tag) for x in reflection.tags] == [(b, tag) for b in used]
        assert reflection.unknown_bullet_ids == ["zzz-0000"]
        curation = Curator(None).curate(reflection, list(bullets.values()))
        assert curation.mode == "outcome_signal" and curation.delta is not None
        assert all(isinstance(op, TagOp) for op in curation.delta.ops)
        assert {op.op_id for op in curation.delta.ops} == {f"traj-{outcome}:tag:{b}" for b in used}
    unknown = Reflector(None).reflect(trajectory("unknown", used), bullets)
    assert unknown.tags == [] and "outcome unknown" in unknown.note
    assert Curator(None).curate(unknown, []).delta is None


def test_extraction_uses_structured_fields_only() -> None:
    failure = trajectory("failure", [], verdict_detail="expected 58, got 55", answer="55")
    extraction = MemoryExtractor(None).extract(failure)
    assert extraction.mode == "outcome_signal"
    (draft,) = extraction.drafts
    assert draft.outcome == "failure" and draft.description.startswith("preventive")
    assert draft.title == "add failed via edge/node-3 -> cognitive/large"
    for fact in ("Task: 41+17?", "Wrong answer: 55", "expected 58, got 55", "Mean entropy: 0.800"):
        assert fact in draft.content
    assert draft.source.trajectory_id == "traj-failure"
    assert memory_id_for(draft) == memory_id_for(structured_draft(failure))  # stable
    assert MemoryExtractor(None).extract(trajectory("unknown", [])).drafts == []


def test_learn_reflects_curates_and_distils_once(service: ContextService) -> None:
    used = seed(service)
    first = service.learn(trajectory("success", used))
    assert first.modes == {
        "reflector": "outcome_signal",
        "curator": "outcome_signal",
        "extractor": "outcome_signal",
    }
    assert first.delta is not None and sorted(first.delta.applied) == sorted(
        f"traj-success:tag:{b}" for b in used
    )
    replay = service.learn(trajectory("success", used))
    assert (
        replay.delta is not None and replay.delta.applied == [] and replay.version == first.version
    )
    assert [b.helpful for b in service.playbook("twin-a").bullets] == [1, 1]
    service.learn(trajectory("failure", used[:1]))
    counters = {b.id: (b.helpful, b.harmful) for b in service.playbook("twin-a").bullets}
    assert counters == {used[0]: (1, 1), used[1]: (1, 0)}
    lessons = service.search_memories("twin-a", MemoryQuery(query="41+17", outcome="failure"))
    assert [h.memory.source.trajectory_id for h in lessons.hits] == ["traj-failure"]


def test_generator_without_a_model_hands_back_the_context(service: ContextService) -> None:
    used = seed(service)
    retrieval = service.retrieve("twin-a", RetrieveRequest(query="41+17?"))
    result = Generator(None).generate("41+17?", retrieval)
    assert result.mode == "outcome_signal" and result.answer is None
    assert sorted(result.bullet_ids) == sorted(used)
    assert "TASK: 41+17?" in result.prompt and all(f"[{b}]" in result.prompt for b in used)
    assert bullet_id_for("strategies", "r1") in used


def test_first_json_reads_what_models_wrap() -> None:
    assert first_json('Sure! ```json\n{"insights": [{"section": "checks"}]}\n```') == {
        "insights": [{"section": "checks"}]
    }
    assert first_json('[1, 2] and {"a": 1}') == [1, 2]
    assert first_json("no json {here") is None


@pytest.mark.slow
def test_a_model_that_cannot_read_the_prompt_leaves_the_roles_on_the_outcome(
    service: ContextService,
) -> None:
    """The shipped `small` tier reads only the task alphabet: every role's prompt is refused
    by its tokenizer, and learning still happens on the outcome signal, saying why."""
    from trifecta.cognitive.backends.huggingface import HuggingFaceBackend
    from trifecta.cognitive.tiers import load_tier

    model, tokenizer = load_tier("small")
    service.language_model = HuggingFaceBackend(model, tokenizer, name="small")
    used = seed(service)
    result = service.learn(trajectory("failure", used))
    assert set(result.modes.values()) == {"outcome_signal"}
    assert result.reflection.note.startswith("model call failed (prompt:")
    assert result.extraction.note.startswith("model call failed")
    assert result.delta is not None and len(result.delta.applied) == len(used)
    assert [m.status for m in result.memories] == ["added"]
    retrieval = service.retrieve("twin-a", RetrieveRequest(query="41+17?"))
    generated = Generator(service.language_model).generate("41+17?", retrieval)
    assert generated.answer is None and generated.note.startswith("model call failed")
