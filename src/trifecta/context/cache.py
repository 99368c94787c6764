"""Result caching shared by every replica, kept coherent by per-domain versions.

Every write bumps its domain's version in the shard (the source of truth) and, after the
commit, publishes it to Redis. A reader asks Redis for the version (or, with no Redis, the
shard) and looks results up under (domain, version, request): first in its own process,
then in Redis. A write therefore changes the key every replica reads next, so a read on
replica B after a write on replica A returns cannot see the old result.

If a writer dies between commit and publish, the version key's expiry (`version_ttl_s`)
bounds how long replicas may serve the previous version: on expiry they read the shard.

Redis failing (down, or up but not answering) costs one call `timeout_s` and opens the
process's breaker (`RedisLink`): reads then use the in-process cache and the shard's version
at once. A write whose publish failed keeps its version; when Redis answers again the
process republishes it before it reads Redis again, and it checks each domain's version
against the shard once (another replica's publish may have failed too).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel

from trifecta.context.version_feed import VersionFeed
from trifecta.core.logging import get_logger

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")
# Whether a lookup that missed in the process goes on to Redis (a callable: decided then).
Shared = bool | Callable[[], bool]
log = get_logger(__name__)

# Publish only forward: concurrent writers may publish out of order. An advance is also
# pushed to the subscribed replicas (`version_feed.py`) in the same atomic step. Returns the
# version Redis holds afterwards.
_PUBLISH_MAX = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('PUBLISH', KEYS[2], ARGV[3] .. ' ' .. ARGV[1])
  return tonumber(ARGV[1])
end
return current
"""


def connect_redis(url: str, timeout_s: float = 0.25, retry_s: float = 0.5) -> RedisLink:
    """The process's link to Redis: every call gives up after `timeout_s` (connect included),
    and a failed call opens the breaker, so a hung Redis costs one request a bounded wait and
    the rest none."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries inside the client: redis-py's default (10 retries with backoff) turns one
    # 0.25 s timeout into seconds; the breaker below decides when to try again.
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return RedisLink(client, retry_s=retry_s)


class RedisDown(Exception):
    """Redis did not answer (or the breaker is open): the caller uses its fallback."""


class RedisLink:
    """Every Redis call of a process goes through one breaker.

    Closed: calls go to Redis. A call that fails (refused, reset, timed out) opens it: calls
    then fail at once with `RedisDown` and a background thread pings Redis every `retry_s`.
    When Redis answers, the recovery hooks run first (the version board republishes what
    writers could not publish), then the generation is bumped (readers verify each domain's
    version against its shard once before trusting Redis again), then the breaker closes.
    Written here rather than taken from a breaker library because that order matters: no
    caller may read Redis between its return and the republish of this process's versions.
    """

    def __init__(self, client: Any, *, retry_s: float = 0.5):
        self.client = client
        self.retry_s = retry_s
        self.generation = 0
        self.calls = self.failures = self.skipped = self.recoveries = 0
        self._open = False
        self._lock = threading.Lock()
        self._hooks: list[Callable[[Any], None]] = []
        self._prober: threading.Thread | None = None

    @property
    def is_open(self) -> bool:
        return self._open

    def on_recover(self, hook: Callable[[Any], None]) -> None:
        """Run `hook(client)` when Redis answers again, before any caller may use it."""
        self._hooks.append(hook)

    def call(self, op: Callable[[Any], R]) -> R:
        """`op(client)`, or `RedisDown` if the breaker is open or the call fails."""
        if self._open:
            self.skipped += 1
            raise RedisDown("circuit open")
        self.calls += 1
        try:
            return op(self.client)
        except Exception as exc:  # redis.RedisError and socket errors alike
            self._trip(exc)
            raise RedisDown(str(exc)) from exc

    def _trip(self, exc: BaseException) -> None:
        with self._lock:
            self.failures += 1
            if self._open:
                return
            self._open = True
            log.warning("redis unreachable; using the in-process cache", error=str(exc))
            self._prober = threading.Thread(target=self._probe, name="redis-probe", daemon=True)
            self._prober.start()

    def _probe(self) -> None:
        spent = 0.0
        while True:
            # One ping per `retry_s` counted from the start of the last: a ping to a paused
            # Redis takes its whole timeout, and sleeping a full `retry_s` after it would let
            # a replica that never tripped read a stale version for longer than `retry_s`.
            time.sleep(max(0.0, self.retry_s - spent))
            started = time.monotonic()
            try:
                self.client.ping()
                for hook in self._hooks:
                    hook(self.client)
            except Exception as exc:  # still down (or down again during the republish)
                log.debug("redis still unreachable", error=str(exc))
                spent = time.monotonic() - started
                continue
            with self._lock:
                self.generation += 1
                self.recoveries += 1
                self._open = False
            log.info("redis reachable again", generation=self.generation)
            return

    def stats(self) -> dict[str, int]:
        return {
            "redis_calls": self.calls,
            "redis_open": int(self._open),
            "redis_failures": self.failures,
            "redis_skipped": self.skipped,
            "redis_recoveries": self.recoveries,
        }


def request_key(kind: str, request: BaseModel | dict[str, Any]) -> str:
    body = (
        request.model_dump_json()
        if isinstance(request, BaseModel)
        else repr(sorted(request.items()))
    )
    return kind + ":" + hashlib.blake2b(body.encode(), digest_size=12).hexdigest()


class VersionBoard:
    """Where readers learn a domain's current version. Redis errors degrade to the shard.

    A version this process could not publish is kept (the highest per domain) and published
    when Redis answers again. After Redis came back, a domain's version is taken from the
    shard once (and published) before the board trusts Redis for it: another replica may
    have committed writes it could not publish while Redis was away.

    With `feed`, a reader first asks the local board a pub/sub subscription keeps
    (`version_feed.py`), which answers without a Redis call while the subscription is live;
    a version read from Redis or published by this process goes on that board too."""

    def __init__(
        self,
        link: RedisLink | None,
        *,
        ttl_s: float,
        prefix: str = "trifecta:ctx",
        feed: bool = False,
    ):
        self.link = link
        self.ttl_ms = int(ttl_s * 1000)
        self.prefix = prefix
        self.channel = f"{prefix}:versions"
        # An entry outlives its Redis key by at most a second (see VersionFeed).
        self.feed = (
            VersionFeed(link.client, self.channel, entry_ttl_s=min(ttl_s, 1.0), key_of=self.key)
            if link is not None and feed
            else None
        )
        self._script = link.client.register_script(_PUBLISH_MAX) if link else None
        self._lock = threading.Lock()
        self._unpublished: dict[str, int] = {}  # domain -> highest version not yet published
        self._verified: dict[str, int] = {}  # domain -> link generation its version was checked
        if link is not None:
            link.on_recover(self._republish)

    def key(self, domain: str) -> str:
        return f"{self.prefix}:v:{domain}"

    def get(self, domain: str) -> int | None:
        """The published version, or None (no Redis, not published, expired, unreachable, or
        not yet checked against the shard since Redis came back): the caller reads the shard
        and publishes what it read."""
        link = self.link
        if link is None:
            return None
        if link.generation and self._verified.get(domain, 0) < link.generation:
            return None
        feed = self.feed
        epoch = None
        if feed is not None and not link.is_open:
            feed.start()
            version = feed.lookup(domain)
            if version is not None:
                return version
            epoch = feed.current_epoch()
        try:
            value = link.call(lambda r: r.get(self.key(domain)))
        except RedisDown:
            return None
        if value is None:
            return None
        if feed is not None:
            feed.learn(domain, int(value), epoch)
        return int(value)

    def publish(self, domain: str, version: int) -> None:
        link = self.link
        if link is None:
            return
        generation = link.generation
        epoch = self.feed.current_epoch() if self.feed is not None else None
        try:
            held = link.call(lambda r: self._publish(r, domain, version))
        except RedisDown:
            with self._lock:
                self._unpublished[domain] = max(version, self._unpublished.get(domain, -1))
            return
        with self._lock:
            if self._verified.get(domain, 0) < generation:
                self._verified[domain] = generation
        if self.feed is not None:  # this process reads its own write without waiting
            self.feed.learn(domain, held, epoch)

    def _publish(self, client: Any, domain: str, version: int) -> int:
        """Publish forward; the version Redis holds afterwards."""
        assert self._script is not None
        keys = [self.key(domain), self.channel]
        return int(self._script(keys=keys, args=[version, self.ttl_ms, domain], client=client))

    def _republish(self, client: Any) -> None:
        """Runs on the prober's thread when Redis answers again, before the breaker closes."""
        with self._lock:
            pending = dict(self._unpublished)
        for domain, version in pending.items():
            self._publish(client, domain, version)  # a failure leaves the breaker open
            with self._lock:
                if self._unpublished.get(domain) == version:
                    del self._unpublished[domain]
        log.info("versions republished", domains=len(pending))

    def unpublished(self) -> int:
        return len(self._unpublished)

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()

    def stats(self) -> dict[str, int]:
        return self.feed.stats() if self.feed is not None else {}


@dataclass
class CachedResult:
    """A cached result: its JSON (what HTTP answers and Redis stores) and, once someone in
    this process asked for it, the model parsed from it. One computed here keeps the model
    and makes its JSON when first asked for it (`json`): an in-process caller (the loop's
    retrievals, without Redis) never needs it."""

    body: bytes | None
    value: BaseModel | None = None

    def json(self) -> bytes:
        if self.body is None:
            assert self.value is not None  # one of the two is always kept
            self.body = self.value.model_dump_json().encode()
        return self.body


class ResultCache:
    """Results by (domain, version, request key): an in-process LRU over Redis. Each is kept
    as its JSON, so an HTTP hit is answered with the bytes as they are (no validation and no
    encoding per request), and as the model for in-process callers."""

    def __init__(
        self,
        link: RedisLink | None,
        *,
        max_entries: int,
        ttl_s: float,
        prefix: str = "trifecta:ctx",
    ):
        self.link = link
        self.ttl_ms = int(ttl_s * 1000)
        self.prefix = prefix
        self.max_entries = max_entries
        self._local: OrderedDict[tuple[str, int, str], CachedResult] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.shared_hits = 0
        self._sharer = _Sharer(link, self.ttl_ms)

    def _redis_key(self, domain: str, version: int, key: str) -> str:
        return f"{self.prefix}:r:{domain}:{version}:{key}"

    def get(
        self, domain: str, version: int, key: str, model: type[T], *, shared: Shared = True
    ) -> T | None:
        found = self._find(domain, version, key, shared=shared)
        if found is None:
            return None
        if found.value is None:
            found.value = model.model_validate_json(found.json())
        return found.value  # type: ignore[return-value]

    def get_body(
        self, domain: str, version: int, key: str, *, shared: Shared = True
    ) -> bytes | None:
        """The result's JSON, or None; `shared=False` looks in this process only (the event
        loop's lookup: no network call on the thread every request goes through); a
        callable is asked after a miss here whether to look in Redis."""
        found = self._find(domain, version, key, shared=shared)
        return found.json() if found is not None else None

    def _find(
        self, domain: str, version: int, key: str, *, shared: Shared = True
    ) -> CachedResult | None:
        local_key = (domain, version, key)
        with self._lock:
            found = self._local.get(local_key)
            if found is not None:
                self._local.move_to_end(local_key)
                self.hits += 1
                return found
        if self.link is not None and (shared() if callable(shared) else shared):
            redis_key = self._redis_key(domain, version, key)
            try:
                raw = self.link.call(lambda r: r.get(redis_key))
            except RedisDown:
                raw = None
            if raw is not None:
                stored = CachedResult(bytes(raw))
                self._remember(local_key, stored)
                self.shared_hits += 1
                return stored
        self.misses += 1
        return None

    def put(self, domain: str, version: int, key: str, value: BaseModel) -> CachedResult:
        """Keep a result here, and hand its JSON to the sharer thread for Redis (without
        Redis the JSON waits until an HTTP answer asks for it: `CachedResult.json`). The request
        that computed it does not wait for Redis: a key names its version, so a late SET can
        only ever be right, and this replica answers from its own copy."""
        result = CachedResult(None, value)
        self._remember((domain, version, key), result)
        if self.link is not None:
            self._sharer.send(self._redis_key(domain, version, key), result.json())
        return result

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every result put so far was sent to Redis (or given up); False if
        `timeout` passed first."""
        return self._sharer.flush(timeout)

    def _remember(self, key: tuple[str, int, str], value: CachedResult) -> None:
        with self._lock:
            self._local[key] = value
            self._local.move_to_end(key)
            while len(self._local) > self.max_entries:
                self._local.popitem(last=False)

    def stats(self) -> dict[str, int]:
        links = self.link.stats() if self.link is not None else {}
        return (
            {
                "hits": self.hits,
                "shared_hits": self.shared_hits,
                "misses": self.misses,
                "entries": len(self._local),
            }
            | self._sharer.stats()
            | links
        )


class _Sharer:
    """Sends a process's results to Redis from a thread of its own, in pipelines of what
    queued meanwhile. Under load the SET's round trip was the computed read's longest wait
    (the reply, then the interpreter lock and a core to read it: up to 170 ms beside the
    learning worker, benchmarks/context_service.py's loop workload); sharing a result with
    other replicas is worth a round trip, but not on the request's clock. At most `backlog`
    results wait; past it the oldest are not shared (other replicas compute their own)."""

    def __init__(self, link: RedisLink | None, ttl_ms: int, backlog: int = 1024):
        self.link = link
        self.ttl_ms = ttl_ms
        self.backlog = backlog
        self._queue: deque[tuple[str, bytes]] = deque()
        self._busy = 0  # results taken from the queue and not yet sent
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.shared = self.unshared = 0

    def send(self, redis_key: str, body: bytes) -> None:
        with self._cond:
            self._queue.append((redis_key, body))
            while len(self._queue) > self.backlog:
                self._queue.popleft()
                self.unshared += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="context-result-sharer", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        assert self.link is not None  # started by `send`, which a linked cache calls
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch = list(self._queue)
                self._queue.clear()
                self._busy = len(batch)
            try:
                self.link.call(partial(self._set_all, batch=batch))
                self.shared += len(batch)
            except RedisDown:  # the in-process copies serve this replica
                self.unshared += len(batch)
            with self._cond:
                self._busy = 0
                self._cond.notify_all()

    def _set_all(self, client: Any, *, batch: list[tuple[str, bytes]]) -> None:
        pipe = client.pipeline(transaction=False)
        for redis_key, body in batch:
            pipe.set(redis_key, body, px=self.ttl_ms)
        pipe.execute()

    def flush(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stats(self) -> dict[str, int]:
        return {"shared": self.shared, "unshared": self.unshared}
