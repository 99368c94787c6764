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

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from trifecta.context.memory_table import Row, item_of, row_of
from trifecta.context.models import Bullet, BulletStatus, MemoryHit, MemoryItem, RankedBullet
from trifecta.context.render import rank_bullets
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import Vector
from trifecta.context.standing import FirstAsks, SearchKey, Standing, StandingSearches
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
        # The memories' vectors and compact rows (a model is built per hit); None: none yet
        self.index: MemoryIndex | None = None
        self.searches = StandingSearches()
        # query -> ranked bullets, least recently asked dropped past `bullet_rankings_kept`
        self._rankings: OrderedDict[bytes | None, list[RankedBullet]] = OrderedDict()
        self.rankings_kept = (
            ContextSettings().bullet_rankings_kept if rankings_kept is None else rankings_kept
        )
        # a ranking is kept from its query's second ask, as a standing search is (`standing.py`)
        self.ranking_asks = FirstAsks(ContextSettings().standing_searches_first_asks)
        # Brief: a search takes the view's parts and its standing search under it, a write
        # swaps its new parts in (`apply`); neither computes under it (but see `apply`).
        self.lock = threading.RLock()
        self.writing = threading.Lock()  # one write at a time; searches never take it
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
        (`since <= version < changes.version`); False if they do not (a reader catches up).

        Copy on write, append-only: the new parts (bullets, a fork of the index with the
        written memories appended and the removed or rewritten ones stamped dead, the
        standing searches' new top-k lists) are built beside the searches, which go on
        reading the view as it was, and swapped in at once under the view's lock, so a
        search sees the view before or after a write, never part of one, and does not wait
        for the write's work. A learner at nice 10 can lose its core inside that work for
        tens of ms, and a search waiting on the lock waited that long. The fork copies
        nothing (it shares the index's arrays and maps: `MemoryIndex.fork`); the copy of
        the id maps it made before cost the writer 0.5 ms a batch at 10,000 memories. A
        view whose index keeps a usearch graph (`MemoryIndex.graph_shared`) is written under
        the lock throughout, as its graph changes in place. A write that fails leaves the
        view empty (the next read loads it from the shard)."""
        with self.writing:  # writes one at a time; only a writer changes `version`
            with self.lock:
                if not changes.since <= max(self.version, 0) or self.version >= changes.version:
                    return False
                searches = self.searches.entries()
                shared = self.index is not None and self.index.graph_shared
            try:
                with self.lock if shared else contextlib.nullcontext():
                    self._swap_in(changes, searches)
            except BaseException:
                self._reset()
                raise
            return True

    def _reset(self) -> None:
        with self.lock:
            self.version = -1
            self.bullets, self.bullet_vectors, self.index = {}, {}, None
            self.searches.clear()
            self._rankings.clear()

    def _swap_in(self, changes: Changes, searches: list[Standing]) -> None:
        bullets, bullet_vectors = self.bullets, self.bullet_vectors
        if changes.bullets:
            bullets, bullet_vectors = dict(bullets), dict(bullet_vectors)
        for bullet, vector in changes.bullets:
            if bullet.status == BulletStatus.ACTIVE:
                bullets[bullet.id] = bullet
                bullet_vectors[bullet.id] = vector
            else:
                bullets.pop(bullet.id, None)
                bullet_vectors.pop(bullet.id, None)
        index = self.index
        added: list[tuple[MemoryItem, Vector]] = []
        gone: list[str] = []
        if changes.memories:
            for item, status, vector in changes.memories:
                if item.domain != self.domain:
                    raise ValueError(
                        f"memory {item.id} is of domain {item.domain}, not {self.domain}"
                    )
                if status == "active":
                    added.append((item, vector))
                else:
                    gone.append(item.id)
            if index is not None:
                index = index.fork()
            elif added:
                index = MemoryIndex(len(added[0][1]))
            if index is not None:
                index.remove(gone)
                index.upsert(((m.id, v) for m, v in added), [row_of(m) for m, _ in added])
        # A memory rewritten with its vector and filtered fields as they were (a reinforced
        # one: its count moved) scores and filters as before, so it leaves every standing
        # search as it was; as a rewrite it dropped the searches it was in (the k+1-th is
        # unknown after a change), and a repeated prompt's own memory is in its top-k.
        moved = [(m, v) for m, v in added if not _same_place(self.index, m, v)]
        update = StandingSearches.plan(searches, moved, set(gone), clear=len(added) > MERGE_AT_MOST)
        with self.lock:
            if changes.bullets:
                self._rankings.clear()
            self.bullets, self.bullet_vectors = bullets, bullet_vectors
            self.index = index
            self.searches.commit(update)
            self.version = changes.version

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
            index, version = self.index, self.version
            if index is None:
                return []
            found = self.searches.get(key)
            if found is None and index.graph_shared:  # a write changes its graph in place
                found = _search_index(index, query, k, outcome, since)
                self.searches.put(key, query, found)
        if found is None:
            # Outside the lock: a write meanwhile builds new parts and leaves these as they are.
            found = _search_index(index, query, k, outcome, since)
            with self.lock:
                if self.version == version:  # else a write came between: not kept, as
                    self.searches.put(key, query, found)  # it did not merge this answer
        return [
            MemoryHit(memory=item_of(self.domain, _row(index, m)), similarity=s)
            for m, s in found
            if s >= min_similarity
        ]

    def nearest_memory(self, vector: Vector, outcome: str) -> tuple[str, float] | None:
        """The writer's de-duplication probe: searched, never kept as a standing search."""
        with self.lock:
            index = self.index
            if index is None:
                return None
            if index.graph_shared:
                found = _search_index(index, vector, 1, outcome, None)
                return found[0] if found else None
        found = _search_index(index, vector, 1, outcome, None)
        return found[0] if found else None

    def nearest_memories(
        self, vectors: Sequence[Vector], outcomes: Sequence[str]
    ) -> list[tuple[str, float] | None]:
        """`nearest_memory` of each vector with its outcome, from one matrix product of the
        batch with the view's index (`MemoryIndex.search_many`): a learner's batch probed
        its memories one scan each, most of its CPU while holding the interpreter lock."""
        if len(vectors) != len(outcomes):
            raise ValueError(f"outcomes: {len(outcomes)} for {len(vectors)} vectors")
        with self.lock:
            index = self.index
            if index is None or not vectors:
                return [None] * len(vectors)
            if index.graph_shared:  # a write changes its graph in place: searched under it
                return [self.nearest_memory(v, o) for v, o in zip(vectors, outcomes, strict=True)]
        found = index.search_many(
            np.stack([np.asarray(v, dtype=np.float32) for v in vectors]),
            1,
            [_accept(index, outcome, None) for outcome in outcomes],
            outcomes,
        )
        return [hits[0] if hits else None for hits in found]


def _same_place(index: MemoryIndex | None, memory: MemoryItem, vector: Vector) -> bool:
    """Whether the memory is in `index` with this vector, outcome and creation time."""
    if index is None:
        return False
    row, before = index.item(memory.id), index.vector(memory.id)
    return (
        row is not None
        and before is not None
        and row.outcome == memory.outcome
        and row.created_at == memory.created_at
        and np.array_equal(before, vector)
    )


def _row(index: MemoryIndex, memory_id: str) -> Row:
    row = index.item(memory_id)
    if row is None:  # the view stores a row with every memory it indexes
        raise KeyError(f"memory {memory_id} has no row in the view")
    return row


def _search_index(
    index: MemoryIndex,
    query: Vector,
    k: int,
    outcome: str | None,
    since: float | None,
) -> list[tuple[str, float]]:
    return index.search(query, k, _accept(index, outcome, since), outcome)


def _accept(
    index: MemoryIndex, outcome: str | None, since: float | None
) -> Callable[[str], bool] | None:
    """The filter of a search with these arguments (None: every memory passes)."""
    if outcome is None and since is None:
        return None

    def accept(memory_id: str) -> bool:
        row = _row(index, memory_id)
        return (outcome is None or row.outcome == outcome) and (
            since is None or row.created_at >= since
        )

    return accept


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
