"""The trained-router baseline, after RouteLLM (Ong et al., 2024, "RouteLLM: Learning to Route
LLMs with Preference Data", arXiv:2406.18665): a classifier on prompt embeddings, trained on
which tier solved which training task, that picks a tier before any generation.

RouteLLM routes between two models with one threshold on P(the strong model is needed). With
more tiers we train one classifier per tier but the last, P(tier t answers correctly | prompt),
and send a request to the smallest tier whose probability reaches that tier's threshold (the
last tier otherwise). The classifier is scikit-learn's logistic regression on the
all-MiniLM-L6-v2 embeddings of `core.embeddings`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput
from trifecta.core.protocols import Embedder


class TrainedRouter:
    """Per-tier success classifiers over prompt embeddings."""

    def __init__(self, embedder: Embedder, tiers: Sequence[str], *, regularization: float = 1.0):
        if len(tiers) < 2:
            raise InvalidInput("a router needs at least two tiers", field="tiers")
        self.embedder = embedder
        self.tiers = tuple(tiers)
        self.regularization = regularization
        self._models: list[object] = []
        self._constant: list[float | None] = []

    def fit(self, prompts: Sequence[str], correct: NDArray[np.bool_]) -> TrainedRouter:
        """`correct[t, i]`: did tier t solve training prompt i."""
        if correct.shape != (len(self.tiers), len(prompts)):
            raise InvalidInput("labels must be [tiers, prompts]", field="correct")
        return self.fit_embedded(self.embedder.embed(list(prompts)), correct)

    def fit_embedded(
        self, features: NDArray[np.float32], correct: NDArray[np.bool_]
    ) -> TrainedRouter:
        from sklearn.linear_model import LogisticRegression

        self._models, self._constant = [], []
        for level in range(len(self.tiers) - 1):
            labels = correct[level].astype(int)
            if labels.min() == labels.max():  # a tier that always (or never) solves: no classifier
                self._models.append(None)
                self._constant.append(float(labels[0]))
                continue
            model = LogisticRegression(C=self.regularization, max_iter=2000)
            model.fit(features, labels)
            self._models.append(model)
            self._constant.append(None)
        return self

    def success_probabilities(self, prompts: Sequence[str]) -> NDArray[np.float64]:
        """[tiers - 1, prompts]: predicted chance each tier but the last answers correctly."""
        return self.success_probabilities_embedded(self.embedder.embed(list(prompts)))

    def success_probabilities_embedded(self, features: NDArray[np.float32]) -> NDArray[np.float64]:
        if not self._models:
            raise InvalidInput("the router is not trained yet", field="router")
        rows = []
        for model, constant in zip(self._models, self._constant, strict=True):
            if model is None:
                rows.append(np.full(len(features), constant, dtype=np.float64))
            else:
                rows.append(model.predict_proba(features)[:, 1])  # type: ignore[attr-defined]
        return np.vstack(rows)

    @staticmethod
    def route(probabilities: NDArray[np.float64], thresholds: Sequence[float]) -> NDArray[np.int64]:
        """Index of the tier each prompt goes to: the smallest whose success probability
        reaches its threshold, else the last."""
        from trifecta.cognitive.calibration import route_starts

        return route_starts(probabilities, thresholds)

    def linear(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """([tiers - 1, features] coefficients, [tiers - 1] intercepts) whose sigmoid is each
        tier's success probability; a tier that always (never) solved gets a flat +/-20 logit."""
        if not self._models:
            raise InvalidInput("the router is not trained yet", field="router")
        width = next(
            (m.coef_.shape[1] for m in self._models if m is not None),  # type: ignore[attr-defined]
            self.embedder.dim,
        )
        coefficients = np.zeros((len(self._models), width))
        intercepts = np.zeros(len(self._models))
        for level, (model, constant) in enumerate(zip(self._models, self._constant, strict=True)):
            if model is None:
                intercepts[level] = 20.0 if constant else -20.0
            else:
                coefficients[level] = model.coef_[0]  # type: ignore[attr-defined]
                intercepts[level] = model.intercept_[0]  # type: ignore[attr-defined]
        return coefficients, intercepts
