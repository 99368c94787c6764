"""The capsule directory answers from memory within the auth layer's bound: a change made by
another process (`trifecta capsule ...` against a running server) applies within `ttl_s` of
its commit, a change through the directory to the very next request, and a capsule in steady
use is renewed off the request's thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

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

    def __init__(self, directory: CapsuleDirectory, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        rows = directory._spec_of
        real = rows.read

        def counted(**values: object) -> tuple[object, ...] | None:
            self.count += 1
            return real(**values)

        monkeypatch.setattr(rows, "read", counted)


DirectoryOf = Callable[[float], tuple[CapsuleDirectory, CountedReads]]


@pytest.fixture
def registry(sqlite_url: str) -> CapsuleRegistry:
    registry = CapsuleRegistry(get_engine(sqlite_url))
    registry.add(_capsule())
    return registry


@pytest.fixture
def elsewhere(registry: CapsuleRegistry, sqlite_url: str) -> CapsuleRegistry:
    """The registry as another process holds it (its own engine)."""
    return CapsuleRegistry(get_engine(sqlite_url))


@pytest.fixture
def directory_of(
    registry: CapsuleRegistry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DirectoryOf]:
    """A directory of the given ttl and a count of its reads; closed after the test."""
    made: list[CapsuleDirectory] = []

    def make(ttl_s: float) -> tuple[CapsuleDirectory, CountedReads]:
        made.append(CapsuleDirectory(registry, ttl_s=ttl_s))
        return made[-1], CountedReads(made[-1], monkeypatch)

    yield make
    for directory in made:
        directory.close()


def test_the_bound_is_the_auth_layers() -> None:
    assert CAPSULE_TTL_S == VERIFY_TTL_S == 0.5


def test_a_change_elsewhere_applies_within_the_ttl_and_not_after_it(
    directory_of: DirectoryOf, elsewhere: CapsuleRegistry
) -> None:
    directory, reads = directory_of(0.3)
    assert directory.get("c1").quota_rps is None
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


def test_a_change_through_the_directory_applies_to_the_next_request(
    directory_of: DirectoryOf,
) -> None:
    directory, _ = directory_of(CAPSULE_TTL_S)
    assert directory.get("c1").quota_rps is None
    directory.add(Capsule(id="c2", name="c2", kind="digital_twin", domain="d1"))
    assert directory.get("c2").domain == "d1"
    assert [c.id for c in directory.members("d1")] == ["c1", "c2"]
    directory.remove("c1")
    with pytest.raises(NotFound):
        directory.get("c1")
    assert [c.id for c in directory.members("d1")] == ["c2"]


def test_within_the_ttl_no_row_is_read_and_renewal_picks_up_changes(
    directory_of: DirectoryOf, elsewhere: CapsuleRegistry
) -> None:
    directory, reads = directory_of(60.0)
    first = directory.get("c1")
    assert directory.get("c1") is first and reads.count == 1
    elsewhere.add(_capsule(quota_rps=2.0), replace=True)
    assert directory.get("c1").quota_rps is None  # inside the ttl: as read before
    assert directory.renew() == 1  # the renewal thread's statement
    assert directory.get("c1").quota_rps == 2.0 and reads.count == 1
    assert directory.members("d1")[0].quota_rps == 2.0  # the index follows the renewal
    unchanged = directory.get("c1")
    directory.renew()
    assert directory.get("c1") is unchanged  # a row that did not change is not parsed
    elsewhere.remove("c1")
    assert directory.renew() == 0
    with pytest.raises(NotFound):
        directory.get("c1")


def test_a_capsule_in_steady_use_is_renewed_off_the_callers_thread(
    directory_of: DirectoryOf,
) -> None:
    directory, reads = directory_of(1.0)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # three ttls of requests every 10 ms
        directory.get("c1")
        time.sleep(0.01)
    # the first read only (expiry alone would read once a ttl: 3 or more), allowing one
    # renewal lost to a loaded machine
    assert reads.count <= 2
    assert any(t.name == "capsule-renewal" for t in threading.enumerate())
