"""Held-out accuracy per grade of the task family, judged on the scratchpad's final answer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from trifecta.core.tasks import DIFFICULTIES, Task, generate_tasks, iter_tasks
from trifecta.generative.decoding import DecodeConfig, Decoder, tokens_generated
from trifecta.generative.model import Routing
from trifecta.generative.sequences import answer_of

# The seed the edge evaluation and the `edge_model` benchmark draw their held-out tasks with,
# so the figures sit beside the cognitive tiers' and the edge model's on the same tasks.
HELDOUT_SEED = 1
# The dev split: held-out-split prompts (never trained on) drawn with another seed, minus any
# prompt among the first HELDOUT_RESERVED of each grade's HELDOUT_SEED tasks. Decoding
# settings are chosen on these, so the held-out figures never chose what they measure.
DEV_SEED = 2
HELDOUT_RESERVED = 1000


@dataclass
class GradeResult:
    difficulty: int
    accuracy: float
    tasks: int


@dataclass
class EvalRun:
    grades: list[GradeResult]
    seconds: float
    tokens: int
    forward_passes: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def heldout_tasks(per_grade: int, grades: Sequence[int] = DIFFICULTIES) -> dict[int, list[Task]]:
    return {
        g: generate_tasks(per_grade, seed=HELDOUT_SEED, split="heldout", difficulties=[g])
        for g in grades
    }


def dev_tasks(per_grade: int, grades: Sequence[int] = DIFFICULTIES) -> dict[int, list[Task]]:
    """`per_grade` tasks per grade of the dev split (disjoint from `heldout_tasks` of up to
    HELDOUT_RESERVED per grade: a prompt drawn by both seeds is skipped here)."""
    out: dict[int, list[Task]] = {}
    for g in grades:
        reserved = {t.prompt for t in heldout_tasks(HELDOUT_RESERVED, [g])[g]}
        stream = iter_tasks(seed=DEV_SEED, split="heldout", difficulties=[g])
        out[g] = []
        while len(out[g]) < per_grade:
            task = next(stream)
            if task.prompt not in reserved:
                out[g].append(task)
    return out


def evaluate(
    decoder: Decoder,
    tasks: dict[int, list[Task]],
    config: DecodeConfig,
    *,
    batch_size: int = 100,
    routing: Routing | None = None,
) -> EvalRun:
    """Decode every task in batches and score the final answers, per grade."""
    grades, tokens, passes, seconds = [], 0, 0, 0.0
    for grade, items in tasks.items():
        correct = 0
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            started = time.perf_counter()
            results, stats = decoder.decode([t.prompt for t in chunk], config, routing)
            seconds += time.perf_counter() - started
            tokens += tokens_generated(results)
            passes += stats.forward_passes
            correct += sum(
                answer_of(r.text) == t.answer for r, t in zip(results, chunk, strict=True)
            )
        grades.append(GradeResult(grade, correct / len(items), len(items)))
    return EvalRun(grades, seconds, tokens, passes)


def heldout_report(decoder: Decoder, per_grade: int) -> dict[str, object]:
    """What the shipped report records: accuracy per grade with the default decoding
    (parallel unmasking, cached) and with one token per step, on the same tasks."""
    tasks = heldout_tasks(per_grade)
    default = DecodeConfig()
    report: dict[str, object] = {
        "heldout_tasks_per_grade": per_grade,
        "decode": default.model_dump(),
    }
    for name, config in {
        "parallel": default,
        "one_token_per_step": DecodeConfig(threshold=None, steps=default.gen_length),
    }.items():
        run = evaluate(decoder, tasks, config)
        report[f"heldout_accuracy_{name}"] = {str(g.difficulty): g.accuracy for g in run.grades}
        report[f"forward_passes_{name}"] = run.forward_passes
    return report
