"""ACE's three roles as pluggable components: Generator, Reflector, Curator.

Each takes `language_model: LanguageModel | None`. With a model they write text (answers,
insights, bullets); with none they work from the trajectory's outcome signal and structured
fields alone: the reflector tags the bullets that were used helpful on success and harmful on
failure, and the curator turns those tags into TAG operations. Every result names its mode,
and a model reply that cannot be read falls back to the outcome signal and says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from trifecta.context import prompts
from trifecta.context.deltas import AddOp, Delta, DeltaOp, TagOp, UpdateOp
from trifecta.context.models import (
    BULLET_ID,
    DEFAULT_SECTIONS,
    SECTION,
    Bullet,
    Retrieval,
    RoleMode,
)
from trifecta.context.trajectory import Trajectory
from trifecta.core.protocols import LanguageModel

_BULLET_REF = re.compile(BULLET_ID.strip("^$").join((r"\b(", r")\b")))
_USED_LINE = re.compile(r"^\s*USED\s*:(.*)$", re.I | re.M)


class GeneratorResult(BaseModel):
    mode: RoleMode
    answer: str | None = Field(description="None when no model is configured")
    bullet_ids: list[str] = Field(description="bullets the answer relied on (model) or was given")
    prompt: str
    note: str = ""


class Generator:
    """Answers a task with the playbook and memories in context and reports the bullets used."""

    def __init__(self, language_model: LanguageModel | None = None, *, max_new_tokens: int = 256):
        self.language_model = language_model
        self.max_new_tokens = max_new_tokens

    def generate(self, task: str, retrieval: Retrieval) -> GeneratorResult:
        prompt = prompts.generator_prompt(retrieval.prompt, task)
        offered = [r.bullet.id for r in retrieval.bullets]
        if self.language_model is None:
            # No model: the caller answers with its own layers; every offered bullet counts as used.
            return GeneratorResult(
                mode="outcome_signal", answer=None, bullet_ids=offered, prompt=prompt
            )
        text, failure = prompts.ask(self.language_model, prompt, self.max_new_tokens)
        if text is None:
            return GeneratorResult(
                mode="outcome_signal", answer=None, bullet_ids=offered, prompt=prompt, note=failure
            )
        used_line = _USED_LINE.search(text)
        cited = _BULLET_REF.findall(used_line.group(1) if used_line else text)
        answer = text[: used_line.start()].strip() if used_line else text.strip()
        return GeneratorResult(
            mode="language_model",
            answer=answer,
            bullet_ids=[b for b in dict.fromkeys(cited) if b in set(offered)],
            prompt=prompt,
        )


class BulletTag(BaseModel):
    bullet_id: str = Field(pattern=BULLET_ID)
    tag: Literal["helpful", "harmful"]


class Insight(BaseModel):
    section: str = Field(pattern=SECTION)
    content: str = Field(min_length=1, max_length=1000)


class Reflection(BaseModel):
    trajectory_id: str
    mode: RoleMode
    note: str = Field(description="why this mode, and anything skipped")
    tags: list[BulletTag]
    insights: list[Insight]
    unknown_bullet_ids: list[str] = Field(description="ids the trajectory named that do not exist")


class _ReflectorReply(BaseModel):
    bullet_tags: list[BulletTag] = Field(default_factory=list)
    insights: list[Insight] = Field(default_factory=list, max_length=3)


def outcome_tags(trajectory: Trajectory, used: Sequence[str]) -> list[BulletTag]:
    if trajectory.outcome == "unknown":
        return []
    tag: Literal["helpful", "harmful"] = "helpful" if trajectory.outcome == "success" else "harmful"
    return [BulletTag(bullet_id=b, tag=tag) for b in used]


class Reflector:
    """Reads a trajectory and its outcome; tags the bullets it used and proposes insights."""

    def __init__(self, language_model: LanguageModel | None = None, *, max_new_tokens: int = 512):
        self.language_model = language_model
        self.max_new_tokens = max_new_tokens

    def reflect(self, trajectory: Trajectory, bullets: Mapping[str, Bullet]) -> Reflection:
        used = [b for b in dict.fromkeys(trajectory.bullet_ids) if b in bullets]
        unknown = [b for b in trajectory.bullet_ids if b not in bullets]
        fallback = outcome_tags(trajectory, used)
        if self.language_model is None:
            note = "no language model: tags from the outcome signal, no insights"
            if trajectory.outcome == "unknown":
                note = "no language model and outcome unknown: nothing to tag"
            return Reflection(
                trajectory_id=trajectory.id,
                mode="outcome_signal",
                note=note,
                tags=fallback,
                insights=[],
                unknown_bullet_ids=unknown,
            )
        prompt = prompts.reflector_prompt(trajectory, [bullets[b] for b in used])
        text, failure = prompts.ask(self.language_model, prompt, self.max_new_tokens)
        reply = prompts.parse(_ReflectorReply, text)
        if reply is None:
            why = failure or "model reply was not the expected JSON"
            return Reflection(
                trajectory_id=trajectory.id,
                mode="outcome_signal",
                note=f"{why}: tags from the outcome signal",
                tags=fallback,
                insights=[],
                unknown_bullet_ids=unknown,
            )
        by_model = {t.bullet_id: t for t in reply.bullet_tags if t.bullet_id in used}
        tags = (
            [by_model.get(t.bullet_id, t) for t in fallback]
            if fallback
            else list(by_model.values())
        )
        return Reflection(
            trajectory_id=trajectory.id,
            mode="language_model",
            note="tags and insights from the model; untagged used bullets follow the outcome",
            tags=tags,
            insights=reply.insights,
            unknown_bullet_ids=unknown,
        )


class Curation(BaseModel):
    mode: RoleMode
    note: str
    delta: Delta | None = Field(description="None when there is nothing to change")


class _CuratorOp(BaseModel):
    op: Literal["ADD", "UPDATE"]
    section: str | None = Field(default=None, pattern=SECTION)
    content: str = Field(min_length=1, max_length=1000)
    bullet_id: str | None = Field(default=None, pattern=BULLET_ID)


class _CuratorReply(BaseModel):
    operations: list[_CuratorOp] = Field(default_factory=list, max_length=10)


class Curator:
    """Turns a reflection into delta operations. Op ids derive from the trajectory id, so
    learning from the same trajectory twice changes nothing the second time."""

    def __init__(self, language_model: LanguageModel | None = None, *, max_new_tokens: int = 512):
        self.language_model = language_model
        self.max_new_tokens = max_new_tokens

    def curate(self, reflection: Reflection, playbook: Sequence[Bullet]) -> Curation:
        tid = reflection.trajectory_id
        ops: list[DeltaOp] = [
            TagOp(op_id=f"{tid}:tag:{t.bullet_id}", bullet_id=t.bullet_id, tag=t.tag)
            for t in reflection.tags
        ]
        mode: RoleMode = "outcome_signal"
        note = "tags only"
        if reflection.insights and self.language_model is not None:
            insights = [(i.section, i.content) for i in reflection.insights]
            prompt = prompts.curator_prompt(insights, playbook)
            text, failure = prompts.ask(self.language_model, prompt, self.max_new_tokens)
            reply = prompts.parse(_CuratorReply, text)
            if reply is not None:
                ops += self._model_ops(tid, reply, {b.id for b in playbook})
                mode, note = "language_model", "operations from the model"
            else:
                ops += self._insight_ops(reflection)
                why = failure or "model reply was not the expected JSON"
                note = f"{why}: each insight added as a bullet"
        elif reflection.insights:
            ops += self._insight_ops(reflection)
            note = "no language model: each insight added as a bullet (refine de-duplicates)"
        return Curation(
            mode=mode, note=note, delta=Delta(ops=ops, source=f"curator:{tid}") if ops else None
        )

    @staticmethod
    def _insight_ops(reflection: Reflection) -> list[DeltaOp]:
        return [
            AddOp(
                op_id=f"{reflection.trajectory_id}:add:{i}",
                section=ins.section,
                content=ins.content,
            )
            for i, ins in enumerate(reflection.insights)
        ]

    @staticmethod
    def _model_ops(tid: str, reply: _CuratorReply, existing: set[str]) -> list[DeltaOp]:
        ops: list[DeltaOp] = []
        for i, op in enumerate(reply.operations):
            if op.op == "UPDATE" and op.bullet_id in existing:
                ops.append(
                    UpdateOp(op_id=f"{tid}:upd:{i}", bullet_id=op.bullet_id, content=op.content)
                )
            elif op.op == "ADD":
                section = op.section if op.section else DEFAULT_SECTIONS[0]
                ops.append(AddOp(op_id=f"{tid}:add:{i}", section=section, content=op.content))
        return ops
