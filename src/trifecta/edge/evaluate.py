"""Accuracy of any language model on the task family, per difficulty grade (torch-free)."""

from __future__ import annotations

from pydantic import BaseModel

from trifecta.core.protocols import LanguageModel
from trifecta.core.tasks import DIFFICULTIES, TaskFamilyVerifier, generate_tasks


class GradeAccuracy(BaseModel):
    difficulty: int
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def accuracy_by_difficulty(
    model: LanguageModel,
    *,
    per_grade: int = 200,
    seed: int = 1,
    batch: int = 32,
    max_new_tokens: int = 6,
) -> list[GradeAccuracy]:
    """Greedy answers to `per_grade` held-out tasks of each grade, checked by the verifier."""
    verifier = TaskFamilyVerifier()
    results = []
    for grade in DIFFICULTIES:
        tasks = generate_tasks(per_grade, seed=seed, split="heldout", difficulties=[grade])
        correct = 0
        for start in range(0, len(tasks), batch):
            chunk = tasks[start : start + batch]
            outputs = model.generate([t.prompt for t in chunk], max_new_tokens=max_new_tokens)
            correct += sum(
                bool(verifier.verify(t.prompt, g.text)) for t, g in zip(chunk, outputs, strict=True)
            )
        results.append(GradeAccuracy(difficulty=grade, correct=correct, total=len(tasks)))
    return results
