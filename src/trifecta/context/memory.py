"""ReasoningBank (Ouyang et al., 2025): distilling memory items from trajectories.

Successes and failures both become memories; a failure becomes a preventive lesson. With a
language model the items are written by the model; without one they are composed from the
trajectory's structured fields only (task, answer, verdict, path, entropy), and the result
says which. Ids derive from the trajectory, so learning from it twice adds nothing new.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, Field

from trifecta.context import prompts
from trifecta.context.models import MemoryDraft, MemorySource, RoleMode
from trifecta.context.trajectory import Trajectory
from trifecta.core.protocols import LanguageModel

MAX_ITEMS = 3


def memory_id_for(draft: MemoryDraft, index: int = 0) -> str:
    """A stable id: from the source trajectory and position, else from the text itself."""
    if draft.id:
        return draft.id
    basis = (
        f"{draft.source.trajectory_id}:{index}"
        if draft.source.trajectory_id
        else f"{draft.outcome}\x00{draft.title}\x00{draft.description}\x00{draft.content}"
    )
    return "mem-" + hashlib.blake2b(basis.encode(), digest_size=10).hexdigest()


def memory_text(draft: MemoryDraft) -> str:
    """The text a memory is embedded and matched by, unless the memory is keyed by its
    request's query embedding (`learn_batch.query_key`)."""
    return text_of(draft.title, draft.description, draft.content)


def text_of(title: str, description: str, content: str) -> str:
    """`memory_text` of a stored item's fields."""
    return f"{title}. {description} {content}".strip()


class Extraction(BaseModel):
    mode: RoleMode
    note: str
    drafts: list[MemoryDraft]


class _Item(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=1000)
    content: str = Field(min_length=1, max_length=4000)


class _Reply(BaseModel):
    memories: list[_Item] = Field(min_length=1, max_length=MAX_ITEMS)


def structured_draft(trajectory: Trajectory) -> MemoryDraft:
    """One memory item from the trajectory's fields alone (no model, no invented text)."""
    kind = trajectory.task_kind or "task"
    succeeded = trajectory.outcome == "success"
    answer = trajectory.answer if trajectory.answer is not None else "(none)"
    lines = [f"Task: {trajectory.prompt}", f"{'Answer' if succeeded else 'Wrong answer'}: {answer}"]
    if trajectory.verdict_detail:
        lines.append(f"Verdict: {trajectory.verdict_detail}")
    lines.append(f"Path: {trajectory.path}")
    if trajectory.mean_entropy is not None:
        lines.append(f"Mean entropy: {trajectory.mean_entropy:.3f}")
    # The bullets used are not listed: their ids mean nothing to a reader or to similarity
    # (they made half the embedded text), and the TAG ops record them against the trajectory.
    return MemoryDraft(
        title=f"{kind} {'solved' if succeeded else 'failed'} via {trajectory.path}"[:200],
        description=(
            f"{trajectory.judge} judged the answer correct"
            if succeeded
            else f"preventive: {trajectory.judge} judged the answer wrong"
        ),
        content="\n".join(lines)[:8000],
        outcome="success" if succeeded else "failure",
        source=MemorySource(
            capsule_id=trajectory.capsule_id,
            task_id=trajectory.task_id,
            trajectory_id=trajectory.id,
        ),
    )


class MemoryExtractor:
    def __init__(self, language_model: LanguageModel | None = None, *, max_new_tokens: int = 512):
        self.language_model = language_model
        self.max_new_tokens = max_new_tokens

    def extract(self, trajectory: Trajectory) -> Extraction:
        if trajectory.outcome == "unknown":
            return Extraction(
                mode="outcome_signal", note="outcome unknown: nothing distilled", drafts=[]
            )
        fallback = [structured_draft(trajectory)]
        if self.language_model is None:
            return Extraction(
                mode="outcome_signal",
                note="no language model: composed from the trajectory's fields",
                drafts=fallback,
            )
        text, failure = prompts.ask(
            self.language_model, prompts.memory_prompt(trajectory), self.max_new_tokens
        )
        reply = prompts.parse(_Reply, text)
        if reply is None:
            why = failure or "model reply was not the expected JSON"
            return Extraction(
                mode="outcome_signal", note=f"{why}: composed from fields", drafts=fallback
            )
        source = fallback[0].source
        outcome = fallback[0].outcome
        drafts = [
            MemoryDraft(
                title=i.title,
                description=i.description,
                content=i.content,
                outcome=outcome,
                source=source,
            )
            for i in reply.memories
        ]
        return Extraction(mode="language_model", note="written by the model", drafts=drafts)
