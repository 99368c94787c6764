"""The read-through TTL cache under the key store and the capsule directory: an entry serves
for its ttl from before the read that filled it, renewal ahead of expiry keeps an entry in use
off the callers' threads, a local change applies at once (and beats any read in flight), and
concurrent readers never see a value older than those bounds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.core.ttl_cache import TtlCache


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0  # ages then compare exactly with the test's offsets

    def __call__(self) -> float:
        return self.now


class Source:
    """The rows: a version a key, changed here or 'elsewhere'; counts the reads."""

    def __init__(self, clock: Clock | None = None, read_s: float = 0.0) -> None:
        self.rows: dict[str, int] = {}
        self.reads = 0
        self.renewed_keys: list[str] = []
        self.clock, self.read_s = clock, read_s

    def loader(self, key: str) -> Callable[[int | None], int | None]:
        """`load` of `key` as `TtlCache.read` takes it."""
        return lambda _: self.load(key)

    def load(self, key: str) -> int | None:
        self.reads += 1
        found = self.rows.get(key)
        self._slow()
        return found

    def renew(self, entries: Sequence[tuple[str, int]]) -> Mapping[str, int]:
        self.renewed_keys += [key for key, _ in entries]
        found = {key: self.rows[key] for key, _ in entries if key in self.rows}
        self._slow()
        return found

    def _slow(self) -> None:
        # A slow read: its snapshot is taken at once, its answer arrives `read_s` later.
        if self.clock is not None:
            self.clock.now += self.read_s


def manual(
    source: Source,
    clock: Clock,
    ttl_s: float = 1.0,
    *,
    together: bool = False,
    in_use_s: float = 10.0,
    max_entries: int | None = None,
) -> TtlCache[str, int]:
    """A cache on the test's clock whose renewal rounds the test runs itself."""
    cache: TtlCache[str, int] = TtlCache(
        ttl_s,
        source.renew,
        together=together,
        in_use_s=in_use_s,
        max_entries=max_entries,
        clock=clock,
    )
    cache.close()  # no thread: rounds by hand
    return cache


@settings(max_examples=60, deadline=None)
@given(
    ttl_s=st.floats(0.01, 10.0),
    read_s=st.floats(0.0, 5.0),
    probes=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=10),
)
def test_an_entry_serves_for_the_ttl_from_before_its_read(
    ttl_s: float, read_s: float, probes: list[float]
) -> None:
    clock = Clock()
    source = Source(clock, read_s)
    source.rows["k"] = 7
    cache = manual(source, clock, ttl_s)
    began = clock.now
    assert cache.read("k", lambda _: source.load("k")) == 7
    for at in sorted(probes):
        clock.now = began + at
        expected = 7 if at < ttl_s else None  # a slow read's time counts against its entry
        assert cache.get("k") == expected


KEYS = ["a", "b", "c"]
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0.0, 0.7)),
        st.tuples(st.sampled_from(["get", "elsewhere", "here", "remove"]), st.sampled_from(KEYS)),
        st.tuples(st.just("round"), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps=STEPS, read_s=st.sampled_from([0.0, 0.05, 0.3]), together=st.booleans())
def test_no_value_older_than_the_bounds_whatever_the_order(
    steps: list[tuple[str, object]], read_s: float, together: bool
) -> None:
    """A model of both users: rows changed elsewhere (seen within the ttl), here (seen at
    once), removed; reads, renewal rounds and the clock in any order."""
    ttl_s = 0.5
    clock = Clock()
    source = Source(clock, read_s)
    cache = manual(source, clock, ttl_s, together=together)
    version = 0
    history: dict[str, list[tuple[float, int | None]]] = {}  # (from, value) a change
    local: dict[str, int] = {}  # the last value changed through this process

    def change(key: str, value: int | None) -> None:
        if value is None:
            source.rows.pop(key, None)
        else:
            source.rows[key] = value
        history.setdefault(key, []).append((clock.now, value))

    for key in KEYS:
        version += 1
        change(key, version)
    for op, arg in steps:
        if op == "advance":
            assert isinstance(arg, float)
            clock.now += arg
        elif op == "round":
            assert isinstance(arg, bool)
            cache.renew(due_only=arg)
        else:
            assert isinstance(arg, str)
            key = arg
            if op in ("elsewhere", "here"):
                version += 1
                change(key, version)
            elif op == "remove":
                change(key, None)
            if op in ("here", "remove"):
                cache.invalidate(key)
                local[key] = version if op == "here" else -1
            if op != "get":
                continue
            asked = clock.now
            value = cache.get_or_read(key, source.loader(key))
            if value is None:
                assert key not in source.rows  # gone now
                continue
            # the value was the row's at some moment within the ttl before the call
            changes = history[key]
            at = next(i for i, (_, v) in enumerate(changes) if v == value)
            ended = changes[at + 1][0] if at + 1 < len(changes) else float("inf")
            assert ended > asked - ttl_s
            assert value >= local.get(key, 0)  # a change here applies at once


def test_a_read_begun_before_a_local_change_is_not_kept() -> None:
    clock = Clock()
    source = Source(clock)
    source.rows["k"] = 1
    cache = manual(source, clock)

    def raced(_: int | None) -> int | None:
        value = source.load("k")
        source.rows["k"] = 2  # changed here while the read was on its way
        cache.invalidate("k")
        return value

    assert cache.read("k", raced) == 1  # the caller gets what it read...
    assert cache.get("k") is None  # ...but it is not kept
    assert cache.get_or_read("k", lambda _: source.load("k")) == 2


def test_a_renewal_in_flight_does_not_bring_back_a_local_change() -> None:
    clock = Clock()
    source = Source(clock)
    source.rows["k"] = 1
    cache: TtlCache[str, int] = TtlCache(1.0, clock=clock)
    cache.close()

    def renew(entries: Sequence[tuple[str, int]]) -> Mapping[str, int]:
        found = source.renew(entries)
        cache.invalidate("k")  # revoked here while the renewal read the old row
        return found

    cache._renew = renew
    cache.read("k", lambda _: source.load("k"))
    clock.now += 0.8
    assert cache.get("k") == 1
    assert cache.renew(due_only=True) == 0
    assert cache.get("k") is None and cache.renewals == 0


def test_a_renewed_entry_ages_from_before_its_renewal_read() -> None:
    clock = Clock()
    source = Source(clock, read_s=0.25)  # each read's answer arrives a quarter second late
    source.rows["k"] = 1
    cache = manual(source, clock, 1.0)
    cache.read("k", source.loader("k"))
    clock.now = 0.75
    assert cache.get("k") == 1
    assert cache.renew(due_only=True) == 1 and clock.now == 1.0
    clock.now = 1.74
    assert cache.get("k") == 1
    clock.now = 1.75  # a ttl after the renewal began, not after its answer came
    assert cache.get("k") is None


def test_an_older_read_never_replaces_a_newer_one() -> None:
    clock = Clock()
    source = Source(clock)
    cache = manual(source, clock, 1.0)
    older = cache.stamp()
    clock.now += 0.1
    source.rows["k"] = 2
    cache.read("k", source.loader("k"))
    assert not cache.put("k", 1, older)
    assert cache.get("k") == 2

    def gone_then_back(entries: Sequence[tuple[str, int]]) -> Mapping[str, int]:
        del source.rows["k"]
        found = source.renew(entries)  # the renewal finds the row gone...
        source.rows["k"] = 3  # ...it comes back, and a caller reads it meanwhile
        cache.read("k", source.loader("k"))
        return found

    cache._renew = gone_then_back
    clock.now += 0.8
    assert cache.get("k") == 2
    assert cache.renew(due_only=True) == 0
    assert cache.get("k") == 3  # the caller's newer read stays


def test_renewal_keeps_an_entry_in_use_fresh_and_forgets_a_gone_one() -> None:
    clock = Clock()
    source = Source(clock)
    source.rows.update(a=1, b=1)
    cache = manual(source, clock, 1.0)
    for key in "ab":
        cache.read(key, source.loader(key))
    assert source.reads == 2
    for _ in range(10):  # ten ttls, each hit after it is due, then a round
        clock.now += 0.8
        assert cache.get("a") == 1 and cache.get("b") == 1
        assert cache.renew(due_only=True) == 2
    assert source.reads == 2 and cache.renewals == 20  # no read on a caller's path
    del source.rows["b"]
    source.rows["a"] = 2
    clock.now += 0.8
    cache.get("a")
    assert cache.renew(due_only=True) == 1
    assert cache.get("a") == 2 and cache.get("b") is None and len(cache) == 1


def test_due_only_rounds_renew_the_due_entries_or_all_in_use_together() -> None:
    for together, expected in ((False, ["old"]), (True, ["old", "new"])):
        clock = Clock()
        source = Source(clock)
        source.rows.update(old=1, new=1)
        cache = manual(source, clock, 1.0, together=together)
        cache.read("old", source.loader("old"))
        clock.now += 0.5
        cache.read("new", source.loader("new"))
        assert cache.renew(due_only=True) == 0  # none due yet: no read at all
        clock.now += 0.3
        assert cache.renew(due_only=True) == len(expected)
        assert sorted(source.renewed_keys) == sorted(expected)


def test_an_entry_not_in_use_is_not_renewed_and_dropped_once_expired() -> None:
    clock = Clock()
    source = Source(clock)
    source.rows.update(k=1)
    cache = manual(source, clock, 1.0, in_use_s=0.2)
    cache.read("k", lambda _: source.load("k"))
    clock.now += 0.8  # due, last hit 0.8 ago
    assert cache.renew(due_only=True) == 0 and source.renewed_keys == []
    assert len(cache) == 1 and cache.get("k") == 1  # still fresh: served
    clock.now += 0.5
    cache.renew(due_only=True)
    assert len(cache) == 0


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.integers(0, 30), max_size=80), bound=st.integers(1, 8))
def test_the_entries_stay_within_their_bound_oldest_stored_dropped_first(
    keys: list[int], bound: int
) -> None:
    clock = Clock()
    source = Source(clock)
    cache = manual(source, clock, 10.0, max_entries=bound)
    stored: list[str] = []
    for number in keys:
        key = str(number)
        source.rows[key] = number
        cache.read(key, source.loader(key))
        if key not in stored:
            stored.append(key)
        stored = [k for k in stored if cache.get(k) is not None]
        assert len(cache) <= bound and cache.get(key) == number
    assert stored == [k for k in stored if k in cache._entries]


def test_a_zero_ttl_keeps_nothing_and_bad_settings_name_their_field() -> None:
    source = Source()
    source.rows["k"] = 1
    cache: TtlCache[str, int] = TtlCache(0.0)
    for _ in range(3):
        assert cache.get_or_read("k", source.loader("k")) == 1
    assert source.reads == 3 and len(cache) == 0
    with pytest.raises(ValueError, match="ttl_s"):
        TtlCache(-1.0)
    with pytest.raises(ValueError, match="renew_at"):
        TtlCache(1.0, renew_at=1.0)
    with pytest.raises(ValueError, match="max_entries"):
        TtlCache(1.0, max_entries=0)


def test_the_renewal_thread_reads_off_the_callers_thread_and_ends_when_idle() -> None:
    source = Source()
    source.rows["k"] = 1
    readers: list[str] = []

    def renew(entries: Sequence[tuple[str, int]]) -> Mapping[str, int]:
        readers.append(threading.current_thread().name)
        return source.renew(entries)

    cache: TtlCache[str, int] = TtlCache(0.2, renew, in_use_s=0.05, name="test-renewal")
    assert cache.get_or_read("k", lambda _: source.load("k")) == 1
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # five ttls of hits every 5 ms
        assert cache.get_or_read("k", lambda _: source.load("k")) == 1
        time.sleep(0.005)
    assert source.reads == 1  # the first read only: renewals did the rest
    assert len(readers) >= 4 and set(readers) == {"test-renewal"}
    idle_since = time.monotonic()
    while any(t.name == "test-renewal" for t in threading.enumerate()):
        assert time.monotonic() - idle_since < 2.0, "the renewal thread outlived its entries"
        time.sleep(0.01)
    assert len(cache) == 0


def test_concurrent_readers_see_local_changes_at_once_and_others_within_the_ttl() -> None:
    ttl_s = 0.1
    lock = threading.Lock()
    rows = {"k": 0}
    changes: list[tuple[float, int, bool]] = []  # (done at, version, made here)

    def load(_: int | None) -> int | None:
        with lock:
            return rows["k"]

    def renew(entries: Sequence[tuple[str, int]]) -> Mapping[str, int]:
        with lock:
            return {key: rows[key] for key, _ in entries}

    cache: TtlCache[str, int] = TtlCache(ttl_s, renew, name="concurrent-renewal")
    stop = threading.Event()
    seen: list[list[tuple[float, int]]] = [[] for _ in range(4)]

    def reader(out: list[tuple[float, int]]) -> None:
        while not stop.is_set():
            began = time.monotonic()
            value = cache.get_or_read("k", load)
            assert value is not None
            out.append((began, value))
            time.sleep(0.0002)  # leave the writer the interpreter now and then

    threads = [threading.Thread(target=reader, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, 41):
            time.sleep(0.01)
            here = version % 2 == 0
            with lock:
                rows["k"] = version
            if here:
                cache.invalidate("k")
            changes.append((time.monotonic(), version, here))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        cache.close()
    calls = [call for out in seen for call in out]
    assert len(calls) > 200
    for began, value in calls:
        floor = max(
            (v for done, v, here in changes if done <= began - (0.0 if here else ttl_s)),
            default=0,
        )
        assert value >= floor, (began, value, floor)
