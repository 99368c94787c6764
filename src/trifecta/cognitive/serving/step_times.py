"""How a replica's decode step time grows with its batch, measured as it runs.

On a GPU a decode step costs about the same at batch 16 as at batch 1 (it is bound by reading
the weights); on a CPU every row adds its own work, so each extra request slows every other
request in the batch. Fair slot shares need to know which case they are in: a replica records
the duration of each step of its loop by batch size (the decode plus any prefill of joiners
and the bookkeeping of rows that leave, so a row's share of the churn it causes counts too;
the median of each size's last `WINDOW` steps; the engine records its thread's CPU time, since
time spent waiting for a core or the GIL does not depend on the batch), fits `t(b) = a + c * b`
by least squares over the sizes seen (weighted by how often each was seen), and reports its
*latency batch*: the largest batch whose step takes at most `1 + budget` times a one-row step.
Until it has seen two batch sizes often enough it claims its whole batch.

A median, not a moving average: a fresh replica's first steps of a size include torch's
first-call work (7 ms against 0.6 for a one-row step of the small tier), and an average seeded
with that, at the sizes a ramp up passes through rarely, fitted a negative slope per row on a
busy replica (claiming all 16 slots as latency slots, so a flood kept 3 rows instead of 1).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

import numpy as np

MIN_SAMPLES = 20  # steps at a batch size before its average counts
REFIT_S = 0.5  # the latency batch is refitted at most this often (it is read per dispatch)
WINDOW = 64  # recent steps per batch size whose median stands for that size


class StepTimes:
    """Decode-step durations by batch size; thread-safe."""

    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self._recent: list[deque[float]] = [deque(maxlen=WINDOW) for _ in range(max_batch + 1)]
        self._count = np.zeros(max_batch + 1, dtype=np.int64)
        self._lock = threading.Lock()
        self._fitted: dict[float, tuple[float, int]] = {}  # budget -> (when, latency batch)

    def record(self, batch: int, seconds: float) -> None:
        if not 1 <= batch <= self.max_batch:
            return
        with self._lock:
            self._recent[batch].append(seconds)
            self._count[batch] += 1

    def fit(self) -> tuple[float, float] | None:
        """(a, c) of t(b) = a + c * b, or None before two batch sizes have enough steps."""
        with self._lock:
            sizes = np.flatnonzero(self._count >= MIN_SAMPLES)
            if len(sizes) < 2:
                return None
            times = np.array([np.median(self._recent[size]) for size in sizes])
            weights = self._count[sizes].astype(float)  # rarely seen sizes count less
        slope, intercept = np.polyfit(sizes.astype(float), times, 1, w=weights)
        return float(intercept), float(slope)

    def latency_batch(self, budget: float) -> int:
        """The largest batch whose predicted step is within `1 + budget` of a one-row step."""
        now = time.monotonic()
        cached = self._fitted.get(budget)
        if cached is not None and now - cached[0] < REFIT_S:
            return cached[1]
        batch = self._latency_batch(budget)
        self._fitted[budget] = (now, batch)
        return batch

    def _latency_batch(self, budget: float) -> int:
        fitted = self.fit()
        if fitted is None:
            return self.max_batch
        a, c = fitted
        single = a + c
        if c <= 0 or single <= 0:
            return self.max_batch  # steps do not grow with the batch (a GPU, or noise)
        extra_rows = budget * single / c
        return max(1, min(self.max_batch, 1 + math.floor(extra_rows)))
