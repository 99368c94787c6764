"""The router in front of the cascade: the tier a request starts on, read from the prompt.

The entropy cascade alone pays for every tier it climbs: a request only the large tier solves
has already paid the small and the medium tier's tokens when it gets there. A router on the
prompt's structure (`prompt_features.py`: length, operand, look-up and subtraction counts, the
grade the grammar reads) predicts, for each tier but the last, the chance that the tier
answers correctly; a request starts on the smallest tier whose predicted success reaches that
tier's cut-off (`Thresholds.router`) and the entropy cascade takes it from there. The cut-offs
are calibrated with the thresholds (`calibration.fit_routed`), per capsule.

The predictions are per-tier logistic regressions (scikit-learn through `router.TrainedRouter`)
fitted on which tier solved which train-split task and shipped as `assets/cognitive/router.json`;
here they are applied with numpy (a logistic regression's `predict_proba` is the sigmoid of
its linear score), so serving needs neither scikit-learn nor an embedding model.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from trifecta.cognitive.prompt_features import FEATURES, PromptFeatures
from trifecta.cognitive.router import TrainedRouter
from trifecta.cognitive.tiers import assets_dir
from trifecta.core.errors import InvalidInput

ROUTER_FILE = "router.json"


class RouterWeights(BaseModel):
    """Per-tier success regressions over `prompt_features.FEATURES` (all tiers but the last)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiers: tuple[str, ...]
    features: tuple[str, ...]
    coefficients: list[list[float]]  # [tiers - 1][features]
    intercepts: list[float]  # [tiers - 1]
    train_tasks: int
    seed: int


class StartRouter:
    """Which tier each prompt starts on, under per-tier cut-offs."""

    def __init__(self, weights: RouterWeights):
        if tuple(weights.features) != FEATURES:
            raise InvalidInput(
                "the router was fitted on other prompt features; refit it "
                "(`trifecta cognitive calibrate --default`)",
                field="router",
            )
        self.weights = weights
        self.tiers = weights.tiers
        self._coefficients = np.asarray(weights.coefficients, dtype=np.float64)
        self._intercepts = np.asarray(weights.intercepts, dtype=np.float64)
        self._features = PromptFeatures()

    def probabilities(self, prompts: Sequence[str]) -> NDArray[np.float64]:
        """[tiers - 1, prompts]: predicted chance each tier but the last answers correctly."""
        features = self._features.embed(list(prompts)).astype(np.float64)  # [prompts, features]
        scores = self._coefficients @ features.T + self._intercepts[:, None]
        return 1.0 / (1.0 + np.exp(-scores))

    def starts(self, prompts: Sequence[str], cutoffs: Mapping[str, float]) -> list[int]:
        """Index of the tier each prompt starts on: the smallest whose predicted success reaches
        its cut-off, else the last."""
        try:
            alphas = [cutoffs[tier] for tier in self.tiers[:-1]]
        except KeyError as missing:
            raise InvalidInput(
                f"no router cut-off for tier {missing}", field="router", allowed=self.tiers[:-1]
            ) from None
        return TrainedRouter.route(self.probabilities(prompts), alphas).tolist()


def fit_router(
    prompts: Sequence[str], correct: NDArray[np.bool_], tiers: Sequence[str], *, seed: int = 0
) -> RouterWeights:
    """Fit the per-tier regressions on `correct[t, i]` (did tier t solve prompt i)."""
    trained = TrainedRouter(PromptFeatures(), tiers).fit(prompts, correct)
    coefficients, intercepts = trained.linear()
    return RouterWeights(
        tiers=tuple(tiers),
        features=FEATURES,
        coefficients=coefficients.tolist(),
        intercepts=intercepts.tolist(),
        train_tasks=len(prompts),
        seed=seed,
    )


def router_path() -> Path:
    return assets_dir() / ROUTER_FILE


def save_router(weights: RouterWeights, path: Path | None = None) -> Path:
    target = path or router_path()
    target.write_text(json.dumps(weights.model_dump(mode="json"), indent=2) + "\n")
    shipped_router.cache_clear()
    return target


@functools.cache
def shipped_router() -> StartRouter | None:
    """The shipped router (None when `router.json` does not ship), read once per process."""
    path = router_path()
    if not path.is_file():
        return None
    return StartRouter(RouterWeights.model_validate_json(path.read_text()))
