"""Result caching shared by every replica, kept coherent by per-domain versions.

Every write bumps its domain's version in the shard (the source of truth) and, after the
commit, publishes it to Redis. A reader asks Redis for the version (or, with no Redis, the
shard) and looks results up under (domain, version, request): first in its own process,
then in Redis. A write therefore changes the key every replica reads next, so a read on
replica B after a write on replica A returns cannot see the old result.

If a writer dies between commit and publish, the version key's expiry (`version_ttl_s`)
bounds how long replicas may serve the previous version: on expiry they read the shard.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any, TypeVar

from pydantic import BaseModel

from trifecta.core.logging import get_logger

T = TypeVar("T", bound=BaseModel)
log = get_logger(__name__)

# Publish only forward: concurrent writers may publish out of order.
_PUBLISH_MAX = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def connect_redis(url: str, timeout_s: float = 0.25) -> Any:
    """A client whose every call gives up after `timeout_s` (then readers use the shard):
    a hung Redis costs a request a bounded wait, not a stall."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def request_key(kind: str, request: BaseModel | dict[str, Any]) -> str:
    body = (
        request.model_dump_json()
        if isinstance(request, BaseModel)
        else repr(sorted(request.items()))
    )
    return kind + ":" + hashlib.blake2b(body.encode(), digest_size=12).hexdigest()


class VersionBoard:
    """Where readers learn a domain's current version. Redis errors degrade to the shard."""

    def __init__(self, redis_client: Any | None, *, ttl_s: float, prefix: str = "trifecta:ctx"):
        self.redis = redis_client
        self.ttl_ms = int(ttl_s * 1000)
        self.prefix = prefix
        self._publish = redis_client.register_script(_PUBLISH_MAX) if redis_client else None

    def key(self, domain: str) -> str:
        return f"{self.prefix}:v:{domain}"

    def get(self, domain: str) -> int | None:
        """The published version, or None (no Redis, not published, expired, unreachable)."""
        if self.redis is None:
            return None
        try:
            value = self.redis.get(self.key(domain))
        except Exception as exc:  # redis.RedisError and socket errors alike: fall back to the shard
            log.warning("redis version read failed", domain=domain, error=str(exc))
            return None
        return int(value) if value is not None else None

    def publish(self, domain: str, version: int) -> None:
        if self._publish is None:
            return
        try:
            self._publish(keys=[self.key(domain)], args=[version, self.ttl_ms])
        except Exception as exc:
            log.warning("redis version publish failed", domain=domain, error=str(exc))


class ResultCache:
    """Results by (domain, version, request key): an in-process LRU over Redis."""

    def __init__(
        self,
        redis_client: Any | None,
        *,
        max_entries: int,
        ttl_s: float,
        prefix: str = "trifecta:ctx",
    ):
        self.redis = redis_client
        self.ttl_ms = int(ttl_s * 1000)
        self.prefix = prefix
        self.max_entries = max_entries
        self._local: OrderedDict[tuple[str, int, str], BaseModel] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.shared_hits = 0

    def _redis_key(self, domain: str, version: int, key: str) -> str:
        return f"{self.prefix}:r:{domain}:{version}:{key}"

    def get(self, domain: str, version: int, key: str, model: type[T]) -> T | None:
        local_key = (domain, version, key)
        with self._lock:
            found = self._local.get(local_key)
            if found is not None:
                self._local.move_to_end(local_key)
                self.hits += 1
                return found  # type: ignore[return-value]
        if self.redis is not None:
            try:
                raw = self.redis.get(self._redis_key(domain, version, key))
            except Exception as exc:
                log.warning("redis cache read failed", domain=domain, error=str(exc))
                raw = None
            if raw is not None:
                value = model.model_validate_json(raw)
                self._remember(local_key, value)
                self.shared_hits += 1
                return value
        self.misses += 1
        return None

    def put(self, domain: str, version: int, key: str, value: BaseModel) -> None:
        self._remember((domain, version, key), value)
        if self.redis is not None:
            try:
                self.redis.set(
                    self._redis_key(domain, version, key), value.model_dump_json(), px=self.ttl_ms
                )
            except Exception as exc:
                log.warning("redis cache write failed", domain=domain, error=str(exc))

    def _remember(self, key: tuple[str, int, str], value: BaseModel) -> None:
        with self._lock:
            self._local[key] = value
            self._local.move_to_end(key)
            while len(self._local) > self.max_entries:
                self._local.popitem(last=False)

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "shared_hits": self.shared_hits,
            "misses": self.misses,
            "entries": len(self._local),
        }
