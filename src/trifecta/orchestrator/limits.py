"""Per-capsule request-rate quotas (`Capsule.quota_rps`): a token bucket per capsule whose
burst is one second of quota. A request over quota is refused with 429 and Retry-After
instead of delaying every other capsule."""

from __future__ import annotations

import threading
import time

from trifecta.core.errors import QuotaExceeded
from trifecta.fleet.capsules import Capsule


class QuotaGate:
    def __init__(self, clock: object = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # capsule -> (tokens, at)
        self._lock = threading.Lock()

    def admit(self, capsule: Capsule) -> None:
        rate = capsule.quota_rps
        if rate is None:
            return
        burst = max(1.0, rate)
        now = self._clock()  # type: ignore[operator]
        with self._lock:
            tokens, at = self._buckets.get(capsule.id, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[capsule.id] = (tokens, now)
                raise QuotaExceeded(
                    f"capsule {capsule.id!r} is over its quota of {rate:g} requests/s",
                    retry_after=(1.0 - tokens) / rate,
                    field="capsule_id",
                )
            self._buckets[capsule.id] = (tokens - 1.0, now)
