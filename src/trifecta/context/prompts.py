"""Prompts the roles send to a configured language model, and reading JSON back from it.

The instructions follow the role descriptions of ACE (Zhang et al., 2025: generator,
reflector, curator) and ReasoningBank (Ouyang et al., 2025: memory items with title,
description and content, failures distilled into preventive lessons). Models answer in
JSON; `first_json` reads the first JSON value in the reply and the roles validate it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from trifecta.context.models import Bullet
from trifecta.context.trajectory import Trajectory
from trifecta.core.errors import TrifectaError
from trifecta.core.protocols import LanguageModel

R = TypeVar("R", bound=BaseModel)


def ask(model: LanguageModel, prompt: str, max_new_tokens: int) -> tuple[str | None, str]:
    """(reply text, "") or (None, why): a model that cannot take the prompt (a character-level
    tier, an endpoint that is down) leaves the role on the outcome signal, not failing it."""
    try:
        return model.generate([prompt], max_new_tokens=max_new_tokens)[0].text, ""
    except TrifectaError as exc:
        return None, f"model call failed ({exc.one_line()})"


def parse(reply_type: type[R], text: str | None) -> R | None:
    """The first JSON value of a reply validated as `reply_type`, or None."""
    if text is None:
        return None
    try:
        return reply_type.model_validate(first_json(text))
    except ValidationError:
        return None


def first_json(text: str) -> Any | None:
    """The first JSON object or array in `text` (models wrap JSON in prose or fences)."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                value, _ = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                continue
            return value
    return None


def describe(trajectory: Trajectory) -> str:
    lines = [
        f"Task: {trajectory.prompt}",
        f"Answer: {trajectory.answer if trajectory.answer is not None else '(none)'}",
        f"Outcome: {trajectory.outcome} (judged by {trajectory.judge})",
        f"Path: {trajectory.path}",
    ]
    if trajectory.verdict_detail:
        lines.append(f"Verdict: {trajectory.verdict_detail}")
    if trajectory.mean_entropy is not None:
        lines.append(f"Mean entropy: {trajectory.mean_entropy:.3f} nats/token")
    return "\n".join(lines)


def generator_prompt(context: str, task: str) -> str:
    return (
        f"{context}\n\n"
        "Solve the task below. Use the playbook and memories where they apply.\n"
        f"TASK: {task}\n"
        "Reply with the answer on the first line, then a last line "
        "'USED: <bullet ids you relied on, comma separated>'."
    )


def reflector_prompt(trajectory: Trajectory, used: Sequence[Bullet]) -> str:
    bullets = "\n".join(f"[{b.id}] {b.content}" for b in used) or "(no bullets were used)"
    return (
        "You review one attempt at a task and what the playbook contributed.\n"
        f"{describe(trajectory)}\n"
        f"Bullets used:\n{bullets}\n\n"
        "Tag each used bullet helpful or harmful for this outcome, and state up to three "
        "short, reusable insights (what to do, or what to avoid) for similar tasks.\n"
        'Reply with JSON only: {"bullet_tags": [{"bullet_id": "...", "tag": "helpful"}], '
        '"insights": [{"section": "strategies|pitfalls|formulas|routing|checks", '
        '"content": "..."}]}'
    )


def curator_prompt(insights: Sequence[tuple[str, str]], playbook: Sequence[Bullet]) -> str:
    existing = "\n".join(f"[{b.id}] ({b.section}) {b.content}" for b in playbook) or "(empty)"
    proposed = "\n".join(f"- ({section}) {content}" for section, content in insights)
    return (
        "You curate a playbook. Add only what is new; update a bullet when an insight "
        "refines it; never restate what is there.\n"
        f"Playbook:\n{existing}\n\nProposed insights:\n{proposed}\n\n"
        'Reply with JSON only: {"operations": [{"op": "ADD", "section": "...", '
        '"content": "..."}, {"op": "UPDATE", "bullet_id": "...", "content": "..."}]}'
    )


def memory_prompt(trajectory: Trajectory) -> str:
    lesson = (
        "what strategy worked and why"
        if trajectory.outcome == "success"
        else "a preventive lesson: what went wrong and how to avoid it"
    )
    return (
        "Distil reusable memory items from this attempt, each capturing "
        f"{lesson}. Generalise beyond the specific numbers.\n"
        f"{describe(trajectory)}\n\n"
        'Reply with JSON only: {"memories": [{"title": "...", "description": "one sentence", '
        '"content": "the lesson in one to three sentences"}]} (at most three items)'
    )
