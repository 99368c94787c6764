"""The capsule directory answers from memory within the auth layer's bound: a change made by
another process (`trifecta capsule ...` against a running server) applies within `ttl_s` of
its commit, a change through the directory to the very next request, and a capsule in steady
use is renewed off the request's thread."""

from __future__ import annotations

import threading
import time

import pytest

from trifecta.core.db import get_engine
from trifecta.core.errors import NotFound
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import VERIFY_TTL_S
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.orchestrator.parts import CAPSULE_TTL_S, CapsuleDirectory


def _capsule(quota_rps: float | None = None) -> Capsule:
    return Capsule(id="c1", name="c1", kind="digital_twin", domain="d1", quota_rps=quota_rps)


class CountedReads:
    """Counts the directory's own row reads (the request thread's)."""

    def __init__(self, directory: CapsuleDirectory):
        self.count = 0
        rows = directory._spec_of
        real = rows.read

        def counted(**values: object) -> tuple[object, ...] | None:
            self.count += 1
            return real(**values)

        rows.read = counted  # type: ignore[method-assign]


@pytest.fixture
def registry(sqlite_url: str) -> CapsuleRegistry:
    registry = CapsuleRegistry(get_engine(sqlite_url))
    registry.add(_capsule())
    return registry


def test_the_bound_is_the_auth_layers() -> None:
    assert CAPSULE_TTL_S == VERIFY_TTL_S == 0.5


def test_a_change_elsewhere_applies_within_the_ttl_and_not_after_it(
    registry: CapsuleRegistry, sqlite_url: str
) -> None:
    directory = CapsuleDirectory(registry, ttl_s=0.3)
    reads = CountedReads(directory)
    try:
        assert directory.get("c1").quota_rps is None
        elsewhere = CapsuleRegistry(get_engine(sqlite_url))  # what another process holds
        elsewhere.add(_capsule(quota_rps=5.0), replace=True)
        committed = time.monotonic()
        calls: list[tuple[float, float | None]] = []  # (began after the commit, quota seen)
        while time.monotonic() - committed < 0.6:
            began = time.monotonic() - committed
            calls.append((began, directory.get("c1").quota_rps))
            time.sleep(0.01)
        # every call begun a ttl after the commit serves the change (however slow the call)
        assert all(quota == 5.0 for began, quota in calls if began >= 0.3)
        assert any(began >= 0.3 for began, _ in calls)
        elsewhere.remove("c1")
        removed = time.monotonic()
        time.sleep(max(0.0, 0.3 - (time.monotonic() - removed)) + 0.01)
        with pytest.raises(NotFound) as err:
            directory.get("c1")
        assert err.value.field == "capsule_id"
        assert reads.count <= 4  # a read a ttl at most, not one a call
    finally:
        directory.close()


def test_a_change_through_the_directory_applies_to_the_next_request(
    registry: CapsuleRegistry,
) -> None:
    directory = CapsuleDirectory(registry)
    try:
        assert directory.get("c1").quota_rps is None
        directory.add(Capsule(id="c2", name="c2", kind="digital_twin", domain="d1"))
        assert directory.get("c2").domain == "d1"
        directory.remove("c1")
        with pytest.raises(NotFound):
            directory.get("c1")
    finally:
        directory.close()


def test_within_the_ttl_no_row_is_read_and_renewal_picks_up_changes(
    registry: CapsuleRegistry, sqlite_url: str
) -> None:
    directory = CapsuleDirectory(registry, ttl_s=60.0)
    reads = CountedReads(directory)
    try:
        first = directory.get("c1")
        assert directory.get("c1") is first and reads.count == 1
        elsewhere = CapsuleRegistry(get_engine(sqlite_url))
        elsewhere.add(_capsule(quota_rps=2.0), replace=True)
        assert directory.get("c1").quota_rps is None  # inside the ttl: as read before
        assert directory.renew() == 1  # the renewal thread's statement
        assert directory.get("c1").quota_rps == 2.0 and reads.count == 1
        unchanged = directory.get("c1")
        directory.renew()
        assert directory.get("c1") is unchanged  # a row that did not change is not parsed
        elsewhere.remove("c1")
        assert directory.renew() == 0
        with pytest.raises(NotFound):
            directory.get("c1")
    finally:
        directory.close()


def test_a_capsule_in_steady_use_is_renewed_off_the_callers_thread(
    registry: CapsuleRegistry,
) -> None:
    directory = CapsuleDirectory(registry, ttl_s=1.0)
    reads = CountedReads(directory)
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # three ttls of requests every 10 ms
            directory.get("c1")
            time.sleep(0.01)
        # the first read only (expiry alone would read once a ttl: 3 or more), allowing one
        # renewal lost to a loaded machine
        assert reads.count <= 2
        assert any(t.name == "capsule-renewal" for t in threading.enumerate())
    finally:
        directory.close()
