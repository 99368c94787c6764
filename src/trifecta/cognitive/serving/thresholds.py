"""Each capsule's escalation thresholds as the `auto` cascade reads them, once a request.

Read straight from the store, every request paid a transaction on the control database and,
for a capsule without a calibration of its own (most of them), a read and parse of the shipped
defaults' file: 0.8 ms of the loop's CPU a request (py-spy, BENCHMARKS.md `loop`). The
thresholds change rarely (online recalibration every few hundred of a capsule's requests,
`trifecta cognitive calibrate`), so the board keeps a snapshot of the table and re-reads it
at most every `ttl_s`: one query of the `(capsule, version)` pairs, then the rows whose version
moved. A recalibration made in this process (`expire`) applies to the next request; one made
by another process within `ttl_s`, as a revoked key does within its re-read interval.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import select

from trifecta.cognitive.cascade import Thresholds
from trifecta.cognitive.store import ThresholdStore, thresholds_table
from trifecta.core.db import transaction

DEFAULT_TTL_S = 1.0


class ThresholdBoard:
    """`board(capsule_id)`: the capsule's stored thresholds, else the shipped defaults."""

    def __init__(self, store: ThresholdStore | None = None, *, ttl_s: float = DEFAULT_TTL_S):
        self._store = store
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._stored: dict[str, tuple[int, Thresholds]] = {}  # capsule -> (version, thresholds)
        self._defaults: Thresholds | None = None
        self._defaults_stamp: int | None = None  # the defaults file's mtime when read
        self._fresh_until = 0.0  # monotonic time; 0: read the table at the next call
        self.refreshes = 0  # table reads (tests, metrics)

    @property
    def store(self) -> ThresholdStore:
        if self._store is None:
            self._store = ThresholdStore()
        return self._store

    def __call__(self, capsule_id: str | None) -> Thresholds:
        if time.monotonic() >= self._fresh_until:
            self._refresh()
        if capsule_id is not None:
            found = self._stored.get(capsule_id)
            if found is not None:
                return found[1]
        assert self._defaults is not None
        return self._defaults

    def expire(self) -> None:
        """Re-read the table at the next call (this process stored a calibration)."""
        self._fresh_until = 0.0

    def _refresh(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._fresh_until:  # another caller refreshed while this one waited
                return
            self._read_defaults()
            store = self.store
            with transaction(store.engine) as session:
                rows = session.execute(
                    select(thresholds_table.c.capsule_id, thresholds_table.c.version)
                )
                versions = {str(capsule_id): int(version) for capsule_id, version in rows}
            stored = {c: v for c, v in self._stored.items() if versions.get(c) == v[0]}
            for capsule_id in versions:
                if capsule_id not in stored:
                    found = store.find(capsule_id)
                    if found is not None:
                        stored[capsule_id] = (found.version, found.thresholds)
            self._stored = stored
            self.refreshes += 1
            self._fresh_until = now + self.ttl_s

    def _read_defaults(self) -> None:
        """The shipped defaults, parsed again only when their file changed."""
        from trifecta.cognitive.service import default_calibration, defaults_path

        path: Path = defaults_path()
        stamp = path.stat().st_mtime_ns if path.is_file() else None
        if self._defaults is None or stamp != self._defaults_stamp:
            self._defaults = default_calibration().thresholds  # NotFound when none ships
            self._defaults_stamp = stamp
