"""In-process views of domains: the read side's cache in front of the shards.

A view holds a domain's active bullets and memories with their embeddings and a usearch
index, at a known version. Reading at version v first brings the view up to v by loading the
rows written since (`seq > view.version`), so it never serves older data than asked for.
The learning worker applies the rows it wrote to the live view itself (`ViewCache.apply`),
so in the writer's process the next read finds the view current and loads nothing.

A view also keeps the answers of the searches and bullet rankings it was asked lately.
Applying a write updates the searches' top-k lists in place (`standing.py`: exact, and only
the searches a new memory enters change) and forgets the bullet rankings if a bullet changed
(re-ranking the playbook's few bullets for a query costs far less than embedding it). So a
read after a write costs the rendering of its answer, not an embedding and a search.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from trifecta.context.memory_table import MemoryTable
from trifecta.context.models import Bullet, BulletStatus, MemoryHit, RankedBullet
from trifecta.context.render import rank_bullets
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import Vector
from trifecta.context.standing import FirstAsks, SearchKey, StandingSearches
from trifecta.context.store import ShardStore
from trifecta.context.vector_index import MemoryIndex
from trifecta.context.writes import Changes

# A write adding more memories than this (a replica catching up on a long absence) drops the
# standing searches rather than scoring every one of them against every new memory.
MERGE_AT_MOST = 512


class DomainView:
    def __init__(self, domain: str, rankings_kept: int | None = None):
        self.domain = domain
        self.version = -1
        self.bullets: dict[str, Bullet] = {}
        self.bullet_vectors: dict[str, Vector | None] = {}
        self.memories = MemoryTable(domain)  # compact rows: a model is built per hit
        self.index: MemoryIndex | None = None
        self.searches = StandingSearches()
        # query -> ranked bullets, least recently asked dropped past `bullet_rankings_kept`
        self._rankings: OrderedDict[bytes | None, list[RankedBullet]] = OrderedDict()
        self.rankings_kept = (
            ContextSettings().bullet_rankings_kept if rankings_kept is None else rankings_kept
        )
        # a ranking is kept from its query's second ask, as a standing search is (`standing.py`)
        self.ranking_asks = FirstAsks(ContextSettings().standing_searches_first_asks)
        self.lock = threading.RLock()  # held by searches and by applying changes (brief)
        self.loading = threading.Lock()  # held while one reader loads changes from the shard

    def catch_up(self, store: ShardStore, at_least: int) -> None:
        """Load what changed until the view reflects version `at_least` or newer. The shard
        is read outside the view's lock, so searches go on meanwhile; one loader at a time."""
        if self.version >= at_least:
            return
        with self.loading:
            if self.version >= at_least:
                return
            self.apply(store.changes_since(self.domain, max(self.version, 0)))

    def apply(self, changes: Changes) -> bool:
        """Apply rows written after `changes.since`, if they join up with what the view holds
        (`since <= version < changes.version`); False if they do not (a reader catches up)."""
        with self.lock:
            if not changes.since <= max(self.version, 0) or self.version >= changes.version:
                return False
            if changes.bullets:
                self._rankings.clear()
            for bullet, vector in changes.bullets:
                if bullet.status == BulletStatus.ACTIVE:
                    self.bullets[bullet.id] = bullet
                    self.bullet_vectors[bullet.id] = vector
                else:
                    self.bullets.pop(bullet.id, None)
                    self.bullet_vectors.pop(bullet.id, None)
            live, gone, added = [], [], []
            for item, status, vector in changes.memories:
                if status == "active":
                    self.memories[item.id] = item
                    live.append((item.id, vector))
                    added.append((item, vector))
                else:
                    self.memories.discard(item.id)
                    gone.append(item.id)
            if live and self.index is None:
                self.index = MemoryIndex(len(live[0][1]))
            if self.index is not None:
                self.index.remove(gone)
                self.index.upsert(live)
            if len(added) > MERGE_AT_MOST:
                self.searches.clear()
            else:
                self.searches.apply(added, set(gone))
            self.version = changes.version
            return True

    def ranked_bullets(self, query: Vector | None) -> list[RankedBullet]:
        key = None if query is None else query.tobytes()
        with self.lock:
            found = self._rankings.get(key)
            if found is None:
                found = rank_bullets(
                    list(self.bullets.values()), query=query, vectors=self.bullet_vectors
                )
                if self.rankings_kept > 0 and self.ranking_asks.again(hash(key)):
                    self._rankings[key] = found
                    while len(self._rankings) > self.rankings_kept:
                        self._rankings.popitem(last=False)
            else:
                self._rankings.move_to_end(key)
            return list(found)

    def active_bullets(self) -> list[Bullet]:
        with self.lock:
            return sorted(self.bullets.values(), key=lambda b: b.id)

    def search(
        self,
        query: Vector,
        *,
        k: int,
        outcome: str | None = None,
        since: float | None = None,
        min_similarity: float = -1.0,
    ) -> list[MemoryHit]:
        """The top-k memories, from the standing search of these arguments if there is one
        (kept current by `apply`), else from the index (and kept from now on)."""
        key = SearchKey(np.asarray(query, dtype=np.float32).tobytes(), k, outcome, since)
        with self.lock:
            if self.index is None:
                return []
            found = self.searches.get(key)
            if found is None:
                found = self._search_index(query, k, outcome, since)
                self.searches.put(key, query, found)
            memories = self.memories
            return [
                MemoryHit(memory=memories[m], similarity=s) for m, s in found if s >= min_similarity
            ]

    def _search_index(
        self, query: Vector, k: int, outcome: str | None, since: float | None
    ) -> list[tuple[str, float]]:
        assert self.index is not None
        memories = self.memories

        def accept(memory_id: str) -> bool:
            return memories.passes(memory_id, outcome, since)

        return self.index.search(query, k, None if outcome is None and since is None else accept)

    def nearest_memory(self, vector: Vector, outcome: str) -> tuple[str, float] | None:
        """The writer's de-duplication probe: searched, never kept as a standing search."""
        with self.lock:
            if self.index is None:
                return None
            found = self._search_index(vector, 1, outcome, None)
        return found[0] if found else None


class ViewCache:
    """The views of the domains this process served lately (least recently used evicted)."""

    def __init__(self, max_domains: int = 256):
        self._views: OrderedDict[str, DomainView] = OrderedDict()
        self._max = max_domains
        self._lock = threading.Lock()

    def get(self, domain: str, store_for: Callable[[str], ShardStore], version: int) -> DomainView:
        with self._lock:
            view = self._views.get(domain)
            if view is None:
                view = self._views[domain] = DomainView(domain)
            self._views.move_to_end(domain)
            while len(self._views) > self._max:
                self._views.popitem(last=False)
        if view.version < version:
            view.catch_up(store_for(domain), version)
        return view

    def holds(self, domain: str, version: int) -> bool:
        """Whether this process holds the domain's view at `version` or newer (a read
        computed from it reads no shard)."""
        with self._lock:
            view = self._views.get(domain)
        return view is not None and view.version >= version

    def apply(self, domain: str, changes: Changes) -> bool:
        """A writer's own changes, applied to the domain's live view if this process holds
        one and they follow on from it (else the next reader catches up from the shard)."""
        with self._lock:
            view = self._views.get(domain)
        return view.apply(changes) if view is not None else False

    def refresh(self, domain: str, store: ShardStore, version: int) -> None:
        """After a write of this process outside the learning worker: bring the domain's view,
        if this process holds one, up to the written version now, so the next read (which
        in the loop is the next request) finds its standing searches already updated."""
        with self._lock:
            view = self._views.get(domain)
        if view is not None and view.version < version:
            view.catch_up(store, version)

    def stats(self) -> dict[str, int]:
        """The standing searches of every view held: how many, and how many writes updated
        in place or dropped (summed over domains)."""
        with self._lock:
            views = list(self._views.values())
        total = {"standing": 0, "standing_updated": 0, "standing_dropped": 0}
        for view in views:
            for name, value in view.searches.stats().items():
                total[name] += value
        return total

    def drop(self, domain: str) -> None:
        with self._lock:
            self._views.pop(domain, None)


class DomainReader(Protocol):
    """What the service reads a domain through: a DomainView (cached) or a StoreReader."""

    @property
    def version(self) -> int: ...

    def active_bullets(self) -> list[Bullet]: ...

    def ranked_bullets(self, query: Vector | None) -> list[RankedBullet]: ...

    def search(
        self,
        query: Vector,
        *,
        k: int,
        outcome: str | None = None,
        since: float | None = None,
        min_similarity: float = -1.0,
    ) -> list[MemoryHit]: ...


class StoreReader:
    """The uncached path: every call reads the shard (bullets, and every candidate memory's
    embedding for a search) and computes the answer from scratch."""

    def __init__(self, store: ShardStore, domain: str):
        self.store = store
        self.domain = domain
        self.version = 0

    def _seen(self, version: int) -> None:
        self.version = max(self.version, version)

    def active_bullets(self) -> list[Bullet]:
        version, bullets = self.store.bullets(self.domain)
        self._seen(version)
        return bullets

    def ranked_bullets(self, query: Vector | None) -> list[RankedBullet]:
        version, pairs = self.store.bullets_with_vectors(self.domain)
        self._seen(version)
        return rank_bullets([b for b, _ in pairs], query=query, vectors={b.id: v for b, v in pairs})

    def search(
        self,
        query: Vector,
        *,
        k: int,
        outcome: str | None = None,
        since: float | None = None,
        min_similarity: float = -1.0,
    ) -> list[MemoryHit]:
        version, hits = self.store.scan_memories(
            self.domain, query, k=k, outcome=outcome, since=since, min_similarity=min_similarity
        )
        self._seen(version)
        return hits
