"""Domain versions pushed to every replica over Redis pub/sub, so a cache hit needs no GET.

Every publish of a version (`cache.VersionBoard`) also PUBLISHes "domain version" on one
channel. Each reading process keeps a subscription on a connection of its own and a local
board of the highest version seen per domain. The board is trusted only while the
subscription is known to be live: the feed PINGs on the subscribed connection every
`ping_s`, and a PONG arrives after every message Redis sent before it (one connection, in
order). So while the last PONG is younger than `stale_s`, the board holds every version
published before that PONG's PING, and a write acknowledged on another replica is on the
board within `stale_s` plus a round trip (RELIABILITY.md promises 0.5 s).

Any lapse (Redis paused or restarted, the connection dropped, this thread starved) ends the
trust at once, because trust is read from the PONG's age; when PONGs come back after a gap
the board is emptied and its epoch moves on, so nothing learned before the gap is served
and a GET answered before it cannot be written in after. Readers then GET as before.

An entry also expires after `entry_ttl_s`, so the version key's Redis expiry still bounds
how long a replica serves a version whose successor's publish never happened (its writer
died between commit and publish). The feed thread renews an entry that readers use before
it expires (one MGET for all such domains, `refresh_ahead_s` before expiry, under the same
epoch rule as a reader's GET), so a steadily read domain does not cost the event loop a
blocking GET every `entry_ttl_s`; an entry whose Redis key is gone is not renewed and
expires as before.

Written here rather than with redis-py's client-side caching (RESP3 tracking): that cache
is invalidated by the same kind of push but gives no signal that its invalidations stopped
arriving, and the guarantee above needs exactly that signal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from trifecta.core.logging import get_logger

log = get_logger(__name__)


class VersionFeed:
    """The local board of domain versions, fed by a subscription thread."""

    def __init__(
        self,
        client: Any,
        channel: str,
        *,
        entry_ttl_s: float = 1.0,
        ping_s: float = 0.05,
        stale_s: float = 0.3,
        key_of: Callable[[str], str] | None = None,
        refresh_ahead_s: float | None = None,
    ):
        self.client = client
        self.channel = channel
        self.entry_ttl_s = entry_ttl_s
        self.ping_s = ping_s
        self.stale_s = stale_s
        self.key_of = key_of  # a domain's Redis version key; None: entries are not renewed
        self.refresh_ahead_s = entry_ttl_s / 2 if refresh_ahead_s is None else refresh_ahead_s
        self.epoch = 0
        self.messages = self.lapses = self.board_hits = self.renewals = 0
        self._board: dict[str, tuple[int, float]] = {}  # domain -> (version, trusted until)
        # domain -> monotonic time a reader last asked for it (one dict store per lookup,
        # atomic under the GIL; the feed thread reads a copy)
        self._asked: dict[str, float] = {}
        self._last_pong = -1e9  # monotonic time of the last PONG; never -> not healthy
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- readers -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the subscription (idempotent); the board is trusted from its first PONG."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="version-feed", daemon=True)
                self._thread.start()

    @property
    def healthy(self) -> bool:
        return time.monotonic() - self._last_pong < self.stale_s

    def lookup(self, domain: str) -> int | None:
        """The domain's version from the board, or None (not on it, expired, or the
        subscription not known live): the caller asks Redis."""
        if not self.healthy:
            return None
        now = time.monotonic()
        self._asked[domain] = now
        entry = self._board.get(domain)
        if entry is None or entry[1] < now:
            return None
        self.board_hits += 1
        return entry[0]

    def current_epoch(self) -> int | None:
        """The epoch to hand back with a version read from Redis now (None: not healthy, so
        what is read now may miss messages and must not go on the board)."""
        return self.epoch if self.healthy else None

    def learn(self, domain: str, version: int, epoch: int | None) -> None:
        """A version read from (or written to) Redis after `current_epoch()` returned
        `epoch`. Kept only if no lapse came between, and never lowers the board."""
        if epoch is None:
            return
        with self._lock:
            if epoch == self.epoch:
                self._raise(domain, version)

    def close(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, int]:
        return {
            "feed_healthy": int(self.healthy),
            "feed_messages": self.messages,
            "feed_lapses": self.lapses,
            "feed_board_hits": self.board_hits,
            "feed_renewals": self.renewals,
        }

    # -- the subscription thread -------------------------------------------------------
    def _raise(self, domain: str, version: int) -> None:
        """Under the lock: a version at least the board's is trusted for `entry_ttl_s`."""
        current = self._board.get(domain)
        if current is None or version >= current[0]:
            self._board[domain] = (version, time.monotonic() + self.entry_ttl_s)

    def _lapse(self) -> None:
        with self._lock:
            self._last_pong = -1e9
            self._board.clear()
            self.epoch += 1
            self.lapses += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                self._listen(pubsub)
            except Exception as exc:  # redis.RedisError and socket errors alike
                log.debug("version feed lost its subscription", error=str(exc))
            finally:
                self._lapse()
                try:
                    pubsub.close()
                except Exception as exc:  # the connection may be gone already
                    log.debug("version feed close failed", error=str(exc))
            self._stop.wait(self.ping_s)

    def _listen(self, pubsub: Any) -> None:
        pinged = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - pinged >= self.ping_s:
                pubsub.ping()
                pinged = now
                self._renew()
            message = pubsub.get_message(timeout=self.ping_s)
            if message is None:
                continue
            kind = message["type"]
            if kind == "pong":
                self._pong()
            elif kind == "message":
                self._message(message["data"])

    def _renew(self) -> None:
        """Re-read from Redis, off the readers' threads, the versions of the domains read
        within the last `entry_ttl_s` whose entries expire within `refresh_ahead_s`. Kept
        only under the epoch taken before the read, and never lowering the board, exactly
        as a reader's GET (`learn`); a missing key renews nothing."""
        if self.key_of is None or not self.healthy:
            return
        now = time.monotonic()
        asked = self._asked.copy()
        for domain, at in asked.items():  # forget domains nobody reads any more
            if now - at > 10 * self.entry_ttl_s:
                self._asked.pop(domain, None)
        with self._lock:
            epoch = self.epoch
            due = [
                domain
                for domain, (_, until) in self._board.items()
                if until - now < self.refresh_ahead_s
                and now - asked.get(domain, -1e9) < self.entry_ttl_s
            ]
        if not due:
            return
        try:
            values = self.client.mget([self.key_of(domain) for domain in due])
        except Exception as exc:  # readers GET as before once the entries expire
            log.debug("version feed renewal failed", error=str(exc))
            return
        with self._lock:
            if epoch != self.epoch:
                return
            for domain, value in zip(due, values, strict=True):
                if value is not None:
                    self._raise(domain, int(value))
                    self.renewals += 1

    def _pong(self) -> None:
        now = time.monotonic()
        if now - self._last_pong >= self.stale_s:
            # Readers stopped trusting the board a while ago (or never did): messages may
            # have been missed, so start over empty under a new epoch.
            with self._lock:
                if self._board:
                    self.lapses += 1
                self._board.clear()
                self.epoch += 1
        self._last_pong = now

    def _message(self, data: bytes) -> None:
        domain, _, version = data.decode().rpartition(" ")
        self.messages += 1
        with self._lock:
            self._raise(domain, int(version))
