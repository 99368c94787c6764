"""A read-through cache of rows another process may change: an entry serves for `ttl_s` from
the read that filled it, entries in use are re-read ahead of expiry by one background
thread, and a change made through this process applies at once.

The bound is what callers rely on (a revoked key, a capsule changed by `trifecta capsule`
against a running server): an entry's age counts from the clock read *before* the read that
filled it, however long the read took, so a change committed elsewhere is served no later
than `ttl_s` after its commit. A change made here goes through `invalidate`, which also drops
any read begun before it (a renewal in flight never brings back what was just revoked).

From `renew_at` of the ttl on, a hit wakes the renewal thread, which re-reads the entries in
use through the owner's `renew` callable (one call for many entries: one statement where the
owner can), a round twice in the time between due and expired, and exits once the cache
holds nothing; so an entry in steady use is never read on a caller's thread, and an empty
cache holds no thread.

Not `cachetools.TTLCache` (nor its `cached` decorator): its entries' clock starts when they
are stored, not before the read; it has no renewal ahead of expiry nor a way to drop a read
that raced a local change; and it is not thread-safe by itself. Those three are the point
here, and the rest (a dict and a size bound) is a few lines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from trifecta.core.logging import get_logger

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = get_logger(__name__)
RENEW_AT = 0.75  # of ttl_s: from then on an entry in use is due for renewal


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    read_at: float  # the clock before the read that filled it
    used_at: float


class Stamp(NamedTuple):
    """When a read began, and the count of local changes then: its result is kept only if
    no local change came in between."""

    at: float
    generation: int


class TtlCache(Generic[K, V]):
    """Entries by key; thread-safe, and a hit takes no lock.

    `renew(entries)` gets the (key, value) of the entries in use that are due and returns the
    new value of each still there; a key left out is gone (forgotten). An exception leaves the
    entries to expire (callers then read them). With `together`, once one entry is due all
    in use are renewed with it, so entries renewed together stay due together (one statement
    a round for the lot); otherwise only the due ones. An entry not hit for `in_use_s` is not
    renewed, and is dropped once expired.
    """

    def __init__(
        self,
        ttl_s: float,
        renew: Callable[[Sequence[tuple[K, V]]], Mapping[K, V]] | None = None,
        *,
        renew_at: float = RENEW_AT,
        in_use_s: float = 10.0,
        together: bool = False,
        max_entries: int | None = None,
        on_stored: Callable[[K, V], None] | None = None,
        name: str = "ttl-renewal",
        clock: Callable[[], float] = time.monotonic,
    ):
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be 0 or more, got {ttl_s}")
        if not 0 < renew_at < 1:
            raise ValueError(f"renew_at must be a share of the ttl in (0, 1), got {renew_at}")
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be 1 or more, got {max_entries}")
        self.ttl_s = ttl_s
        self.renew_at = renew_at
        self.in_use_s = in_use_s
        self.together = together
        self.max_entries = max_entries
        self.name = name
        self.renewals = 0  # entries renewed by `renew`
        self._renew = renew
        self._on_stored = on_stored
        self._clock = clock
        self._due_s = ttl_s * renew_at
        self._entries: dict[K, _Entry[V]] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # a due hit: renew now rather than at the next round
        self._closed = threading.Event()

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: K) -> V | None:
        """The value if read within the ttl, else None; a due hit wakes the renewal."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = self._clock()
        age = now - entry.read_at
        if age >= self.ttl_s:
            return None
        entry.used_at = now
        if age >= self._due_s and self._renew is not None:
            if not self._wake.is_set():
                self._wake.set()
            if self._thread is None:
                self._start_renewal()
        return entry.value

    def read(self, key: K, load: Callable[[V | None], V | None]) -> V | None:
        """Read through: `load(previous value or None)` is the key's value now, or None when
        it is gone (then forgotten). Kept unless a local change came in during the load.
        An exception from `load` leaves the cache as it was."""
        stamp = self.stamp()
        entry = self._entries.get(key)
        value = load(None if entry is None else entry.value)
        if value is None:
            self.discard(key)
        elif self.put(key, value, stamp):
            self._stored(key, value)
        return value

    def get_or_read(self, key: K, load: Callable[[V | None], V | None]) -> V | None:
        found = self.get(key)
        return found if found is not None else self.read(key, load)

    def holds(self, key: K, value: V) -> bool:
        """Whether `value` (this very object) is the key's entry now, fresh or not."""
        entry = self._entries.get(key)
        return entry is not None and entry.value is value

    def __len__(self) -> int:
        return len(self._entries)

    # -- writes ---------------------------------------------------------------------------

    def stamp(self) -> Stamp:
        """Take before a read whose result goes to `put`."""
        return Stamp(self._clock(), self._generation)

    def put(self, key: K, value: V, stamp: Stamp, *, used_at: float | None = None) -> bool:
        """Keep `value`, read from `stamp.at` on; refused (False) if a local change came
        after the stamp or the entry already holds a later read."""
        if self.ttl_s <= 0:
            return False
        with self._lock:
            if self._generation != stamp.generation:
                return False
            old = self._entries.get(key)
            if old is not None and old.read_at > stamp.at:
                return False
            used = stamp.at if used_at is None else used_at
            self._entries[key] = _Entry(value, stamp.at, used)
            if old is None and self.max_entries is not None:
                while len(self._entries) > self.max_entries:  # the oldest stored first
                    del self._entries[next(iter(self._entries))]
        return True

    def invalidate(self, key: K) -> None:
        """A local change to `key`: forget it, and drop every read begun before now."""
        with self._lock:
            self._generation += 1
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def discard(self, key: K) -> None:
        """Forget `key` (found gone by a read), leaving reads in flight be."""
        with self._lock:
            self._entries.pop(key, None)

    # -- renewal --------------------------------------------------------------------------

    def renew(self, *, due_only: bool = False) -> int:
        """One renewal round (the thread's work, or a caller's to force one): drop the
        entries not in use, re-read the due ones in use (all in use with `due_only` False).
        Returns how many were renewed."""
        if self._renew is None:
            return 0
        now = self._clock()
        with self._lock:
            idle = [
                k
                for k, e in self._entries.items()
                if now - e.used_at > self.in_use_s and now - e.read_at >= self.ttl_s
            ]
            for key in idle:
                del self._entries[key]
            in_use = [(k, e) for k, e in self._entries.items() if now - e.used_at <= self.in_use_s]
            generation = self._generation
        due = [(k, e) for k, e in in_use if now - e.read_at >= self._due_s]
        if due_only and not due:
            return 0
        chosen = in_use if self.together or not due_only else due
        if not chosen:
            return 0
        started = self._clock()
        fresh = self._renew([(k, e.value) for k, e in chosen])
        stamp = Stamp(started, generation)
        stored: list[tuple[K, V]] = []
        for key, entry in chosen:
            if key in fresh:
                if self.put(key, fresh[key], stamp, used_at=entry.used_at):
                    stored.append((key, fresh[key]))
                continue
            with self._lock:  # gone: forgotten unless stored anew since the round began
                current = self._entries.get(key)
                if current is not None and current.read_at <= entry.read_at:
                    del self._entries[key]
        self.renewals += len(stored)
        for key, value in stored:
            self._stored(key, value)
        return len(stored)

    def close(self) -> None:
        """Stop the renewal for good (entries then expire; callers read them)."""
        self._closed.set()
        self._wake.set()

    def _stored(self, key: K, value: V) -> None:
        if self._on_stored is not None:
            self._on_stored(key, value)

    def _start_renewal(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed.is_set():
                return
            self._thread = threading.Thread(target=self._renew_loop, name=self.name, daemon=True)
            self._thread.start()

    def _renew_loop(self) -> None:
        # A round twice in the time between due and expired, so a renewal lands before it
        # even for an entry whose hits all fell before it was due; a due hit wakes it sooner.
        pause = self.ttl_s * (1 - self.renew_at) / 2
        while not self._closed.is_set():
            self._wake.clear()
            try:
                self.renew(due_only=True)
            except Exception as exc:  # the database: entries expire, callers read them
                log.warning("renewal failed", cache=self.name, error=str(exc))
            with self._lock:
                if not self._entries:
                    self._thread = None  # nothing held: the next due hit starts another
                    return
            self._wake.wait(pause)
        with self._lock:
            self._thread = None
