"""Run every tier on the same tasks and tabulate what calibration and evaluation read.

Running each tier on the whole sample once (instead of running the cascade) lets any choice of
thresholds, aggregate or router be replayed on the table exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trifecta.cognitive.backends.base import Backend
from trifecta.cognitive.calibration import Observations
from trifecta.cognitive.cost import TierCost
from trifecta.cognitive.entropy import DEFAULT_AGGREGATE, DEFAULT_WINDOW, Aggregate, signal_score
from trifecta.cognitive.scratchpad import ANSWER_TOKENS
from trifecta.core.protocols import Generation
from trifecta.core.tasks import Task, TaskFamilyVerifier


@dataclass(frozen=True)
class TierRuns:
    """Each tier's greedy output on each task: `outputs[tier][task]`."""

    tiers: tuple[str, ...]
    tasks: tuple[Task, ...]
    outputs: tuple[tuple[Generation, ...], ...]
    costs: tuple[TierCost, ...]

    def correct(self) -> np.ndarray:
        verifier = TaskFamilyVerifier()
        return np.array(
            [
                [
                    bool(verifier.verify(task.prompt, out.text))
                    for task, out in zip(self.tasks, row, strict=True)
                ]
                for row in self.outputs
            ]
        )

    def tokens(self) -> np.ndarray:
        return np.array(
            [[o.prompt_tokens + o.completion_tokens for o in row] for row in self.outputs],
            dtype=np.float64,
        )

    def scores(
        self, aggregate: Aggregate = DEFAULT_AGGREGATE, window: int = DEFAULT_WINDOW
    ) -> np.ndarray:
        return np.array(
            [
                [signal_score(o.entropies, aggregate, window, o.tokens) for o in row]
                for row in self.outputs
            ]
        )

    def observations(
        self,
        aggregate: Aggregate = DEFAULT_AGGREGATE,
        window: int = DEFAULT_WINDOW,
        *,
        labelled: bool = True,
    ) -> Observations:
        return Observations(
            tiers=self.tiers,
            scores=self.scores(aggregate, window),
            tokens=self.tokens(),
            flops_per_token=np.array([c.flops_per_token for c in self.costs]),
            correct=self.correct() if labelled else None,
        )


def run_tiers(
    backends: Sequence[Backend],
    costs: Mapping[str, TierCost],
    tasks: Sequence[Task],
    *,
    max_new_tokens: int = ANSWER_TOKENS,
    on_tier: Callable[[str], None] | None = None,
) -> TierRuns:
    """Greedy outputs of every backend on every task."""
    prompts = [task.prompt for task in tasks]
    outputs = []
    for backend in backends:
        outputs.append(tuple(backend.generate(prompts, max_new_tokens=max_new_tokens)))
        if on_tier is not None:
            on_tier(backend.name)
    return TierRuns(
        tiers=tuple(b.name for b in backends),
        tasks=tuple(tasks),
        outputs=tuple(outputs),
        costs=tuple(costs[b.name] for b in backends),
    )
