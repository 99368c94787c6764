"""The threshold board: the cascade's thresholds without a database read a request, changes
applied at once from this process and within its re-read interval from another."""

from __future__ import annotations

import time

from trifecta.cognitive.calibration import Calibration, Target
from trifecta.cognitive.cascade import Thresholds
from trifecta.cognitive.service import default_calibration
from trifecta.cognitive.serving.thresholds import ThresholdBoard
from trifecta.cognitive.store import ThresholdStore
from trifecta.core.db import get_engine


def calibration(small: float) -> Calibration:
    return Calibration(
        thresholds=Thresholds(aggregate="max", window=4, values={"small": small, "medium": 0.6}),
        rates={"small": 0.4, "medium": 0.25},
        target=Target(kind="cost", value=0.4),
        sample_size=400,
        accuracy=0.8,
        cost_share=0.38,
    )


def test_one_table_read_serves_many_requests(sqlite_url: str) -> None:
    store = ThresholdStore(get_engine(sqlite_url))
    store.put("twin-a", calibration(0.3))
    board = ThresholdBoard(store, ttl_s=60)
    defaults = default_calibration().thresholds
    for _ in range(50):
        assert board("twin-a").values["small"] == 0.3
        assert board("twin-b") == defaults  # no calibration of its own
        assert board(None) == defaults
    assert board.refreshes == 1


def test_a_change_applies_after_expire_here_and_within_the_interval_elsewhere(
    sqlite_url: str,
) -> None:
    store = ThresholdStore(get_engine(sqlite_url))
    board = ThresholdBoard(store, ttl_s=0.2)
    assert board("twin-a") == default_calibration().thresholds
    store.put("twin-a", calibration(0.3))  # this process recalibrated ...
    board.expire()  # ... and says so: the next request reads it
    assert board("twin-a").values["small"] == 0.3
    other = ThresholdStore(get_engine(sqlite_url))  # what another process holds
    other.put("twin-a", calibration(0.45))
    other.put("twin-c", calibration(0.1))
    time.sleep(0.25)
    assert board("twin-a").values["small"] == 0.45
    assert board("twin-c").values["small"] == 0.1
    other.remove("twin-a")
    time.sleep(0.25)
    assert board("twin-a") == default_calibration().thresholds
    assert board("twin-c").values["small"] == 0.1
