"""Standing searches: a domain's recent top-k memory searches, kept exact as memories arrive.

A write used to make every cached search of its domain useless (the version moved, so the
next read searched again). A search's answer only changes if a written memory enters its
top-k, and that is cheap to decide for all of them at once: for the new memories' embeddings
E (n x d) and the standing queries' Q (m x d), S = Q @ E.T (one small matrix product), and
memory j enters search i's top-k iff it passes i's filters and S[i, j] beats the k-th score
(ties by id, as `MemoryIndex.search` orders). So a write updates each standing top-k in place
and leaves the searches it cannot change untouched.

The float32 product only screens: a memory that may enter (within `FLOAT32_SLACK` of the
k-th) is scored again in float64 as the index scores its results (`cosines`), and its place
decided on those. What is not decided here drops the affected searches only (the next read
searches the index again): a memory in a search's top-k removed or rewritten (the k+1-th
is not known).

A search is kept from its second ask (a doorkeeper: the first ask of a query is remembered
by its key's hash only, among the last `standing_searches_first_asks` first asks). A kept
search is only worth its 2 KB if its query recurs after a write; a stream of fresh prompts
(the soak's) otherwise fills the bound with searches never asked again. Simulated on the
task streams (`benchmarks/soak.py --hit-rates`), the loop benchmark's stream, whose capsules
repeat a few standing queries, loses under a point of hit rate at the same bound.

Written here rather than taken from a library: usearch and faiss update an index, not the
answers to past queries; this is the incremental view maintenance of a top-k query.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trifecta.context.models import MemoryItem
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import Vector
from trifecta.context.vector_index import FLOAT32_SLACK, cosines, rank_key
from trifecta.core.heap_report import track


@dataclass(frozen=True)
class SearchKey:
    """What a search's answer depends on besides the domain's memories."""

    query: bytes  # the query embedding's float32 bytes
    k: int
    outcome: str | None
    since: float | None


@dataclass
class Standing:
    query: Vector  # (d,) float32: a view of the key's bytes where they are the query's
    key: SearchKey
    top: list[tuple[str, float]]  # up to k (memory id, cosine), best first, ties by id

    def accepts(self, item: MemoryItem) -> bool:
        key = self.key
        return (key.outcome is None or item.outcome == key.outcome) and (
            key.since is None or item.created_at >= key.since
        )

    def kth(self) -> float:
        """The score a memory must beat to enter: the k-th's, or -inf while fewer than k
        memories pass the filters (then every one that passes is in `top`)."""
        return self.top[-1][1] if len(self.top) >= self.key.k else -np.inf


class FirstAsks:
    """The doorkeeper: the hashes of the last `size` keys asked for the first time (an int
    each, about 0.1 KB, not the answer), so that an answer is kept from its second ask."""

    def __init__(self, size: int):
        self.size = size
        self._hashes: OrderedDict[int, None] = OrderedDict()
        track("context first asks (hashes)", self)  # the sizes report: filling or full

    def __len__(self) -> int:
        return len(self._hashes)

    @property
    def entries(self) -> int:
        return len(self._hashes)

    @property
    def bound(self) -> int:
        return self.size

    def again(self, hashed: int) -> bool:
        """True if this is (at least) the key's second ask, or the doorkeeper is off (size
        0); else the ask is remembered. A hash collision only keeps an answer one ask early,
        never changes it."""
        if self.size == 0 or self._hashes.pop(hashed, 0) is None:
            return True
        self._hashes[hashed] = None
        if len(self._hashes) > self.size:
            self._hashes.popitem(last=False)
        return False


class StandingSearches:
    """The standing searches of one domain (least recently asked evicted). Not thread-safe:
    the domain view calls it under its lock.

    `max_entries` bounds them (None: the `standing_searches_kept` setting): a server holds
    one set per domain view, so the bound times the views held is what they can take.
    `first_asks` (None: the `standing_searches_first_asks` setting) is how many first asks
    are remembered so that a search is kept at its second; 0 keeps every search at its first."""

    def __init__(self, max_entries: int | None = None, first_asks: int | None = None):
        settings = ContextSettings()
        self.max_entries = settings.standing_searches_kept if max_entries is None else max_entries
        self.first_asks = (
            settings.standing_searches_first_asks if first_asks is None else first_asks
        )
        self._entries: OrderedDict[SearchKey, Standing] = OrderedDict()
        self._asked_once = FirstAsks(self.first_asks)
        self.updated = self.dropped = 0  # searches changed by a write, dropped by one
        self.hits = self.misses = 0  # `get`s answered, and not

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: SearchKey) -> list[tuple[str, float]] | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found.top

    def put(self, key: SearchKey, query: Vector, top: list[tuple[str, float]]) -> None:
        """Keep a search just made from the index, if this is its second ask (or the
        doorkeeper is off); its first ask is only remembered."""
        if self.max_entries == 0 or not self._asked_once.again(hash(key)):
            return
        vector = np.asarray(query, dtype=np.float32)
        if vector.tobytes() == key.query:  # as the view keys them: keep one copy, not two
            vector = np.frombuffer(key.query, dtype=np.float32)
        self._entries[key] = Standing(vector, key, list(top))
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def apply(
        self,
        added: Sequence[tuple[MemoryItem, Vector]],
        gone: set[str],
    ) -> None:
        """Bring every standing search up to date with a write: `added` are the memories
        written active (new, or rewritten: their id may already be in some top-k), `gone`
        the ids no longer active."""
        self.commit(self.plan(self.entries(), added, gone))

    def entries(self) -> list[Standing]:
        """The searches now kept, for a write to `plan` against (the list is the caller's)."""
        return list(self._entries.values())

    @staticmethod
    def plan(
        entries: list[Standing],
        added: Sequence[tuple[MemoryItem, Vector]],
        gone: set[str],
        *,
        clear: bool = False,
    ) -> StandingUpdate:
        """What a write does to `entries` (taken with `entries()`), computed without changing
        them, so that searches can go on reading them meanwhile; `commit` applies it."""
        if clear or not entries or (not added and not gone):
            return StandingUpdate(entries, {}, set(), clear)
        touched = gone | {item.id for item, _ in added}
        # A rewritten or removed memory inside a top-k: the k+1-th is unknown here.
        stale = {id(e) for e in entries if any(m in touched for m, _ in e.top)}
        live = [e for e in entries if id(e) not in stale]
        tops = _merged(live, added) if added and live else {}
        return StandingUpdate(entries, tops, stale, False)

    def commit(self, update: StandingUpdate) -> None:
        """Apply a write's `plan`. A search kept after the plan's `entries()` was answered
        before the write and the plan has not merged it: it is dropped with the stale ones."""
        if update.clear:
            self._entries.clear()
            return
        planned = {id(e) for e in update.entries}
        for key, entry in list(self._entries.items()):
            if id(entry) not in planned or id(entry) in update.stale:
                del self._entries[key]
                self.dropped += 1
            elif (top := update.tops.get(id(entry))) is not None:
                entry.top = top
                self.updated += 1

    def stats(self) -> dict[str, int]:
        return {
            "standing": len(self._entries),
            "standing_updated": self.updated,
            "standing_dropped": self.dropped,
        }


@dataclass
class StandingUpdate:
    """A write's changes to the standing searches, planned beside the searches' readers."""

    entries: list[Standing]  # the searches planned against (held: their ids stay unique)
    tops: dict[int, list[tuple[str, float]]]  # id(entry) -> its new top-k
    stale: set[int]  # id(entry) of searches the write drops
    clear: bool  # the write drops every search


def _merged(
    entries: list[Standing], added: Sequence[tuple[MemoryItem, Vector]]
) -> dict[int, list[tuple[str, float]]]:
    """The new top-k lists of the searches new memories enter (by id(entry))."""
    queries = np.stack([e.query for e in entries])  # (m, d)
    vectors = np.stack([np.asarray(v, dtype=np.float32) for _, v in added])  # (n, d)
    # einsum, not BLAS: OpenBLAS's threads made this product for 2,048 queries take
    # 35 ms at the median on this loaded 2-core machine, against 0.2 ms here.
    scores = np.einsum("md,nd->mn", queries, vectors)  # (m, n)
    kth = np.array([e.kth() for e in entries], dtype=np.float64)  # (m,)
    near = scores >= (kth - FLOAT32_SLACK)[:, None]  # (m, n): may enter (float32 screen)
    tops: dict[int, list[tuple[str, float]]] = {}
    for i in np.flatnonzero(near.any(axis=1)):
        entry = entries[int(i)]
        hits = (int(j) for j in np.flatnonzero(near[i]))
        candidates = [j for j in hits if entry.accepts(added[j][0])]
        if not candidates:
            continue
        # The float64 similarities a fresh search would report (`cosines`), so equal
        # scores order by id here exactly as there.
        exact = cosines(vectors[candidates], entry.query)
        merged = entry.top + [
            (added[j][0].id, float(s)) for j, s in zip(candidates, exact, strict=True)
        ]
        top = sorted(merged, key=rank_key)[: entry.key.k]
        if top != entry.top:
            tops[id(entry)] = top
    return tops
