"""The cascade over the shipped tiers as the rest of Trifecta uses it.

- `auto_model(capsule_id)`: the `auto` language model with that capsule's calibrated thresholds
  (the shipped defaults when it has none), feeding the online recalibrator when given one.
- `calibrate_capsule(capsule, target)`: draw a sample of the capsule's traffic (its domain's
  tasks in the default mix, held-out split), run every tier on it, fit and persist thresholds.
- The shipped defaults (`assets/cognitive/thresholds.json`) are calibrated the same way on the
  default mix by `trifecta models train` after the tiers change.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from trifecta.cognitive.backends.shipped import shipped_tiers
from trifecta.cognitive.calibration import ROUTED_KINDS, Calibration, Target, calibrate
from trifecta.cognitive.cascade import EscalationCascade, Thresholds, cascade_of
from trifecta.cognitive.cost import all_tier_costs
from trifecta.cognitive.observe import run_tiers
from trifecta.cognitive.online import OnlineCalibrator
from trifecta.cognitive.settings import get_cognitive_settings
from trifecta.cognitive.start_router import RouterWeights, fit_router, save_router, shipped_router
from trifecta.cognitive.store import StoredCalibration, ThresholdStore
from trifecta.cognitive.tiers import TIER_NAMES, assets_dir
from trifecta.core.errors import NotFound
from trifecta.core.tasks import DEFAULT_MIX, Task, generate_tasks
from trifecta.fleet.capsules import Capsule

# The goal the product states: the most accuracy that 40% of the largest tier's compute buys
# (the budget kept by the upper end of a bootstrap interval, so that it holds on new traffic).
DEFAULT_TARGET = Target(kind="cost", value=0.40)
DEFAULT_THRESHOLDS_FILE = "thresholds.json"
ROUTER_TASKS = 2000  # train-split tasks the shipped router learns from (as the benchmark's)


class DefaultCalibration(BaseModel):
    """The shipped thresholds: what a capsule without its own calibration gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thresholds: Thresholds
    rates: dict[str, float]
    target: Target
    sample_size: int
    accuracy: float | None
    cost_share: float


def defaults_path() -> Path:
    return assets_dir() / DEFAULT_THRESHOLDS_FILE


def default_calibration() -> DefaultCalibration:
    path = defaults_path()
    if not path.is_file():
        raise NotFound(
            f"no default thresholds at {path} (run `trifecta cognitive calibrate --default`)",
            field="thresholds",
        )
    return DefaultCalibration.model_validate_json(path.read_text())


def save_default_calibration(
    calibration: Calibration, path: Path | None = None
) -> DefaultCalibration:
    default = DefaultCalibration(
        thresholds=calibration.thresholds,
        rates=calibration.rates,
        target=calibration.target,
        sample_size=calibration.sample_size,
        accuracy=calibration.accuracy,
        cost_share=calibration.cost_share,
    )
    target = path or defaults_path()
    target.write_text(json.dumps(default.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    return default


def traffic_sample(domain: str | None, size: int, *, seed: int = 0) -> list[Task]:
    """A stand-in for a sample of a capsule's traffic: its domain's tasks in the default mix."""
    return generate_tasks(size, seed=seed, split="heldout", difficulties=DEFAULT_MIX, domain=domain)


def calibrate_on(tasks: list[Task], target: Target) -> Calibration:
    """Run every shipped tier on `tasks` and fit thresholds to `target` (with a `cost` or `keep`
    target and a shipped router, the router's cut-offs with them: where each request starts)."""
    settings = get_cognitive_settings()
    runs = run_tiers(shipped_tiers(TIER_NAMES), all_tier_costs(), tasks)
    observations = runs.observations(
        settings.aggregate, settings.window, labelled=target.kind != "rate"
    )
    router = shipped_router() if target.kind in ROUTED_KINDS else None
    return calibrate(
        observations,
        target,
        aggregate=settings.aggregate,
        window=settings.window,
        probabilities=router.probabilities([t.prompt for t in tasks]) if router else None,
    )


def fit_default_router(size: int = ROUTER_TASKS, *, seed: int = 0) -> RouterWeights:
    """Fit the router on which shipped tier solved which of `size` train-split tasks in the
    default mix, and ship it (`assets/cognitive/router.json`)."""
    tasks = generate_tasks(size, seed=seed, split="train", difficulties=DEFAULT_MIX)
    runs = run_tiers(shipped_tiers(TIER_NAMES), all_tier_costs(), tasks)
    weights = fit_router([t.prompt for t in tasks], runs.correct(), TIER_NAMES, seed=seed)
    save_router(weights)
    return weights


def calibrate_capsule(
    capsule: Capsule,
    target: Target | None = None,
    *,
    sample: int | None = None,
    seed: int = 0,
    store: ThresholdStore | None = None,
) -> StoredCalibration:
    """Calibrate `capsule`'s thresholds on a sample of its traffic and persist them."""
    size = sample or get_cognitive_settings().calibration_sample
    calibration = calibrate_on(
        traffic_sample(capsule.domain, size, seed=seed), target or DEFAULT_TARGET
    )
    return (store or ThresholdStore()).put(capsule.id, calibration, source="offline")


def thresholds_for(capsule_id: str | None, store: ThresholdStore | None = None) -> Thresholds:
    """A capsule's stored thresholds, else the shipped defaults."""
    if capsule_id is not None:
        stored = (store or ThresholdStore()).find(capsule_id)
        if stored is not None:
            return stored.thresholds
    return default_calibration().thresholds


def auto_model(
    capsule_id: str | None = None,
    *,
    store: ThresholdStore | None = None,
    online: OnlineCalibrator | None = None,
) -> EscalationCascade:
    """The escalating cascade over the shipped tiers (model name `auto`) for one capsule."""
    settings = get_cognitive_settings()
    thresholds = (
        thresholds_for(capsule_id, store)
        if capsule_id is not None
        else default_calibration().thresholds
    )
    hook = online.hook(capsule_id) if online is not None and capsule_id is not None else None
    return cascade_of(
        shipped_tiers(TIER_NAMES),
        all_tier_costs(),
        thresholds,
        reuse_prefix=settings.reuse_prefix,
        on_decision=hook,
    )


def online_calibrator(store: ThresholdStore | None = None) -> OnlineCalibrator:
    settings = get_cognitive_settings()
    default = default_calibration()
    return OnlineCalibrator(
        store or ThresholdStore(),
        default.thresholds,
        default.rates,
        every=settings.recalibrate_every,
        window=settings.recalibration_window,
    )
