"""Online recalibration: keep each capsule's thresholds tracking its live traffic.

An offline calibration fixes, per tier, the share of requests that tier hands on. Live traffic
drifts (a capsule's mix of grades changes), so the calibrator keeps a window of the latest
signals each tier read for each capsule and, every `every` requests, moves each threshold to the
quantile of its window that restores that share, then persists the result.

One approximation: a tier stops reading a request as soon as its signal crosses, so an
escalated request's recorded signal is its first crossing, not its peak. Thresholds only move
to quantiles of the window, and the crossing value is above the old threshold like the peak, so
the estimate is exact whenever the threshold moves down and slightly low when it moves up.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

import numpy as np

from trifecta.cognitive.calibration import Calibration, Target
from trifecta.cognitive.cascade import Decision, DecisionHook, Thresholds
from trifecta.cognitive.store import StoredCalibration, ThresholdStore
from trifecta.core.logging import get_logger

log = get_logger(__name__)
MIN_SIGNALS = 20  # fewer recent signals than this on a tier: keep its threshold


class OnlineCalibrator:
    """Feeds on the cascade's decisions (`hook(capsule_id)`) and recalibrates per capsule."""

    def __init__(
        self,
        store: ThresholdStore,
        defaults: Thresholds,
        default_rates: Mapping[str, float],
        *,
        every: int = 200,
        window: int = 2000,
    ):
        self.store = store
        self.defaults = defaults
        self.default_rates = dict(default_rates)
        self.every = every
        self.window = window
        self._signals: dict[tuple[str, str], deque[float]] = {}
        self._since: dict[str, int] = {}
        self._lock = threading.Lock()

    def hook(self, capsule_id: str) -> DecisionHook:
        """The `on_decision` callback of a capsule's cascade."""

        def observe(_prompt: str, decision: Decision) -> None:
            self.observe(capsule_id, decision)

        return observe

    def current(self, capsule_id: str) -> tuple[Thresholds, dict[str, float]]:
        stored = self.store.find(capsule_id)
        if stored is None:
            return self.defaults, self.default_rates
        return stored.thresholds, stored.rates

    def observe(self, capsule_id: str, decision: Decision) -> StoredCalibration | None:
        """Record one decision; recalibrate and persist when the capsule is due."""
        if decision.threshold is None:  # the last tier decides nothing
            return None
        with self._lock:
            key = (capsule_id, decision.tier)
            self._signals.setdefault(key, deque(maxlen=self.window)).append(decision.signal)
            # Requests are counted where most start (the first tier); those the router starts
            # higher still feed their tier's window.
            if decision.tier != self._first_tier():
                return None
            self._since[capsule_id] = self._since.get(capsule_id, 0) + 1
            if self._since[capsule_id] < self.every:
                return None
            self._since[capsule_id] = 0
            recent = {
                tier: list(self._signals.get((capsule_id, tier), ()))
                for tier in self.defaults.values
            }
        return self.recalibrate(capsule_id, recent)

    def recalibrate(self, capsule_id: str, recent: Mapping[str, list[float]]) -> StoredCalibration:
        """Move each tier's threshold to the quantile of `recent` signals that keeps its rate."""
        thresholds, rates = self.current(capsule_id)
        values = dict(thresholds.values)
        for tier, signals in recent.items():
            if len(signals) >= MIN_SIGNALS and tier in rates:
                values[tier] = float(np.quantile(np.asarray(signals), 1.0 - rates[tier]))
        updated = thresholds.model_copy(update={"values": values})  # router cut-offs kept
        stored = self.store.find(capsule_id)
        target = (
            stored.target
            if stored is not None
            else Target(kind="rate", value=max(rates.values(), default=1.0))
        )
        calibration = Calibration(
            thresholds=updated,
            rates=rates,
            target=target,
            sample_size=sum(len(s) for s in recent.values()),
            accuracy=None,
            cost_share=float("nan"),
        )
        saved = self.store.put(capsule_id, calibration, source="online")
        log.info(
            "thresholds recalibrated", capsule=capsule_id, thresholds=values, version=saved.version
        )
        return saved

    def _first_tier(self) -> str:
        return next(iter(self.defaults.values))
