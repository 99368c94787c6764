"""Calibrated thresholds persist per capsule (SQLite and Postgres) and recalibrate online."""

from __future__ import annotations

import numpy as np
import pytest

from trifecta.cognitive.calibration import Calibration, Target
from trifecta.cognitive.cascade import Decision, Thresholds
from trifecta.cognitive.online import OnlineCalibrator
from trifecta.cognitive.store import ThresholdStore
from trifecta.core.db import get_engine
from trifecta.core.errors import NotFound


def calibration(small: float, medium: float) -> Calibration:
    return Calibration(
        thresholds=Thresholds(aggregate="max", window=4, values={"small": small, "medium": medium}),
        rates={"small": 0.4, "medium": 0.25},
        target=Target(kind="cost", value=0.4),
        sample_size=400,
        accuracy=0.8,
        cost_share=0.38,
    )


def decision(tier: str, signal: float, threshold: float | None = 0.5) -> Decision:
    return Decision(
        tier=tier,
        signal=signal,
        threshold=threshold,
        escalated=False,
        step=None,
        prompt_tokens=10,
        completion_tokens=3,
        flops=1.0,
        usd=1.0,
    )


def test_thresholds_persist_per_capsule(db_url: str) -> None:
    store = ThresholdStore(get_engine(db_url))
    assert store.find("twin-a") is None
    first = store.put("twin-a", calibration(0.3, 0.6))
    assert first.version == 1
    assert first.thresholds.values == {"small": 0.3, "medium": 0.6}
    store.put("twin-b", calibration(0.2, 0.5))
    second = store.put("twin-a", calibration(0.35, 0.65), source="online")
    assert (second.version, second.source) == (2, "online")
    # A fresh store on the same database reads what was written.
    again = ThresholdStore(get_engine(db_url)).get("twin-a")
    assert again.thresholds.values == {"small": 0.35, "medium": 0.65}
    assert again.rates == {"small": 0.4, "medium": 0.25}
    assert again.target == Target(kind="cost", value=0.4)
    assert [s.capsule_id for s in store.list()] == ["twin-a", "twin-b"]
    assert store.remove("twin-b") and not store.remove("twin-b")
    with pytest.raises(NotFound, match="capsule_id"):
        store.get("twin-b")


def test_online_recalibration_tracks_drifting_traffic(sqlite_url: str) -> None:
    store = ThresholdStore(get_engine(sqlite_url))
    store.put("twin-a", calibration(0.3, 0.6))
    defaults = Thresholds(aggregate="max", window=4, values={"small": 0.3, "medium": 0.6})
    online = OnlineCalibrator(
        store, defaults, {"small": 0.4, "medium": 0.25}, every=100, window=500
    )
    hook = online.hook("twin-a")
    rng = np.random.default_rng(0)
    # The capsule's traffic got harder: its small-tier signals now sit around 1.0.
    for value in rng.normal(1.0, 0.1, size=100):
        hook("41+17?", decision("medium", float(value) + 0.5))
        hook("41+17?", decision("large", 0.0, threshold=None))  # the last tier: ignored
        hook("41+17?", decision("small", float(value)))
    stored = store.get("twin-a")
    assert (stored.version, stored.source) == (2, "online")
    # The small tier's threshold moved to the 60% quantile of its new signals (rate 0.4 kept).
    assert stored.thresholds.values["small"] == pytest.approx(1.0 + 0.1 * 0.253, abs=0.05)
    assert stored.thresholds.values["medium"] == pytest.approx(1.5 + 0.1 * 0.674, abs=0.05)
    assert stored.rates == {"small": 0.4, "medium": 0.25}


def test_online_recalibration_starts_from_the_defaults(sqlite_url: str) -> None:
    store = ThresholdStore(get_engine(sqlite_url))
    defaults = Thresholds(aggregate="max", window=4, values={"small": 0.3, "medium": 0.6})
    online = OnlineCalibrator(store, defaults, {"small": 0.5, "medium": 0.5}, every=40, window=100)
    for i in range(40):
        online.observe("fresh", decision("small", i / 40))
    stored = store.get("fresh")
    assert stored.thresholds.values["small"] == pytest.approx(np.quantile(np.arange(40) / 40, 0.5))
    assert stored.thresholds.values["medium"] == 0.6  # too few medium signals: kept
