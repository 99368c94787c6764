"""Hard per-capsule request-rate quotas: a token bucket per capsule.

A capsule over its `quota_rps` is refused at once with 429 and a Retry-After (the time until
its bucket holds a token again) instead of joining a queue and delaying everyone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from trifecta.core.errors import QuotaExceeded


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    updated: float


class QuotaGate:
    """Token buckets keyed by capsule id; `admit` takes one token or raises `QuotaExceeded`."""

    def __init__(self, *, burst_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.burst_seconds = burst_seconds
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def admit(self, capsule: str, quota_rps: float | None) -> None:
        if quota_rps is None:
            return
        now = self._clock()
        burst = max(1.0, quota_rps * self.burst_seconds)
        with self._lock:
            bucket = self._buckets.get(capsule)
            if bucket is None or bucket.rate != quota_rps:
                bucket = self._buckets[capsule] = _Bucket(quota_rps, burst, burst, now)
            bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.updated) * bucket.rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            retry_after = (1.0 - bucket.tokens) / bucket.rate
        raise QuotaExceeded(
            f"capsule {capsule!r} is over its quota of {quota_rps:g} requests/s",
            retry_after=retry_after,
            field="quota_rps",
        )
