"""A prompt's structure as numbers: the features of the non-neural router baseline.

A skeptic's strongest cheap router needs no model at all: it reads how long a prompt is, how
many operands it has, how many of them are look-ups and subtractions, and how many sensors its
telemetry lists, which is most of what decides how hard a task of the family is. The router is
the same per-tier logistic regression as the RouteLLM-style one (`router.TrainedRouter`), on
these features instead of sentence embeddings. Prompts outside the family still get features
(their length, and zeros where the grammar does not apply).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput
from trifecta.core.tasks import DIFFICULTIES, estimate_difficulty

_TERM = re.compile(r"[+-]")
FEATURES: tuple[str, ...] = (
    "length",
    "operands",
    "lookups",
    "subtractions",
    "telemetry",
    "in_family",
    *(f"grade_{g}" for g in DIFFICULTIES),
)


class PromptFeatures:
    """`Embedder`-shaped (`dim`, `embed`) so the trained router can take it in place of
    sentence embeddings."""

    @property
    def dim(self) -> int:
        return len(FEATURES)

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return np.array([features(text) for text in texts], dtype=np.float32).reshape(
            len(texts), self.dim
        )


def features(prompt: str) -> list[float]:
    """The values of `FEATURES` for one prompt."""
    head, _, question = prompt.strip().rpartition(";")
    terms = [t for t in _TERM.split(question.rstrip("?")) if t]
    try:
        grade = estimate_difficulty(prompt)
    except InvalidInput:
        grade = 0
    return [
        float(len(prompt)),
        float(len(terms)),
        float(sum(t.isalpha() for t in terms)),
        float(question.count("-")),
        float(head.count("=")),
        float(grade > 0),
        *(float(grade == g) for g in DIFFICULTIES),
    ]
