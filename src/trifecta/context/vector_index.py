"""Nearest-neighbour search over one domain's memory embeddings.

Up to `hnsw_above` vectors (50,000 by default) the index scans a contiguous float32 matrix
exactly: for a 10,000-item domain that is one 10,000 x 384 matrix-vector product, about a
millisecond, always exact and free to update. Above it the index also keeps a usearch HNSW
graph (built on first need, then updated in place) and searches that instead.

Filters (outcome, recency) are applied to an oversampled candidate list that is widened
until k items pass or the whole index was searched. An outcome filter is applied to the
scan's scores first, as a vector mask over each row's outcome code (`_codes`), so the
candidates are the best rows of that outcome: a learner's de-duplication probe whose
nearest rows are of the other outcome (memory texts cluster by outcome) rescored and
filtered up to 4,096 candidates in Python, most of a batch's CPU (issue 15).

The candidates' similarities are then computed again in float64 (`cosines`): float32 matrix
products round differently depending on a row's place in the matrix, so two copies of one
vector could score a bit apart and order by where they are stored. In float64 the same
vectors score the same wherever they are, equal scores order by memory id (`rank_key`), and
a search kept up to date by `standing.py` orders exactly as a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import ThreadpoolController

from trifecta.core.shared_libstdcxx import share_libstdcxx

share_libstdcxx()  # before usearch's extension loads: the module says why

from usearch.index import Index  # noqa: E402

from trifecta.context.memory_table import Row  # noqa: E402
from trifecta.context.sql import Vector  # noqa: E402

HNSW_ABOVE = 50_000
OVERSAMPLE = 4
# usearch graph parameters: more candidates per hop than the defaults, for recall >= 0.95 on
# sentence embeddings at the cost of a slower build.
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128
# float32 similarities of unit vectors are within ~1e-6 of the float64 ones: candidates this
# close to the cut are re-scored too, so the float64 order decides who is in.
FLOAT32_SLACK = 1e-5
# The matrix grows in steps of this many rows (384 KB at 384 floats), or of an eighth of its
# rows once that is more (`grown_rows`).
GROW_ROWS = 256


def grown_rows(capacity: int, needed: int) -> int:
    """The matrix's next row count for `needed` rows: steps of `GROW_ROWS`, or of an eighth of
    the matrix once that is larger. Doubling left up to half the matrix spare and grew memory
    by the whole matrix at once (1.5 MB at 1,024 rows of 384 floats), a step that a soak's
    ten-minute slope read as growth or not depending on where it landed; an eighth keeps the
    copying amortized (each row copied about 8 times over the index's life)."""
    step = max(GROW_ROWS, capacity // 8)
    return max(capacity + step, -(-needed // step) * step)


def cosines(vectors: NDArray[np.float32], query: Vector) -> NDArray[np.float64]:
    """Similarities of (n, d) unit vectors with a query, in float64: one value per vector
    whatever its place (einsum's own loop, not BLAS, whose blocking depends on the shape)."""
    return np.einsum(
        "ij,j->i", np.asarray(vectors, dtype=np.float64), np.asarray(query, dtype=np.float64)
    )


def rank_key(pair: tuple[str, float]) -> tuple[float, str]:
    """The order of search results: best score first, equal scores by memory id (so that a
    result list kept up to date by `standing.py` orders exactly as a fresh search)."""
    return -pair[1], pair[0]


NEVER = np.iinfo(np.int64).max  # the death stamp of a row still alive


class _Shared:
    """What an index and its forks share and only append to: each row's memory id, its
    memory (the view's compact row, or None), the row the same id had before (-1: none),
    and each id's newest row. `latest` is the epoch of the newest index over them: only it
    may append (`MemoryIndex.fork`)."""

    __slots__ = ("codes", "ids", "items", "latest", "prev", "row_of")

    def __init__(self) -> None:
        # outcome -> its code in the index's `_codes` (0: a row stored without its memory)
        self.codes: dict[str, int] = {}
        self.ids: list[str] = []
        self.items: list[Row | None] = []
        self.prev: list[int] = []
        self.row_of: dict[str, int] = {}
        self.latest = 0


class MemoryIndex:
    """Append-only: a write appends rows and stamps the rows it removes or rewrites with its
    epoch (`_died`), and an index sees the first `_rows` rows, less those stamped at or
    before its own epoch. So a fork (the next version, for a write to fill while searches
    read this one) shares every array and map and copies nothing: what this index reads
    never changes under it. Rows dead for every index are dropped by a compaction (a copy of
    the live rows into new arrays) once they are half the rows, in the writer."""

    def __init__(self, dim: int, *, hnsw_above: int = HNSW_ABOVE):
        self.dim = dim
        self.hnsw_above = hnsw_above
        self._matrix: NDArray[np.float32] = np.zeros((64, dim), dtype=np.float32)
        self._died: NDArray[np.int64] = np.full(64, NEVER, dtype=np.int64)
        self._codes: NDArray[np.int16] = np.zeros(64, dtype=np.int16)  # each row's outcome
        self._shared = _Shared()
        self._rows = 0  # rows this index sees (later ones are a newer fork's)
        self._live = 0
        self._epoch = 0
        self._graph: Index | None = None

    def __len__(self) -> int:
        return self._live

    def __contains__(self, memory_id: object) -> bool:
        return isinstance(memory_id, str) and self._row(memory_id) is not None

    @property
    def graph_shared(self) -> bool:
        """Whether a `fork` would share a usearch graph (kept, or built at the next search)
        that a write changes in place: then a search must not run beside a write."""
        return self._graph is not None or len(self) > self.hnsw_above

    def _row(self, memory_id: str) -> int | None:
        """The memory's live row as this index sees it, or None."""
        shared = self._shared
        row = shared.row_of.get(memory_id, -1)
        while row >= self._rows:  # written by a newer fork: the row it replaced, if any
            row = shared.prev[row]
        return row if row >= 0 and self._died[row] > self._epoch else None

    def item(self, memory_id: str) -> Row | None:
        """The memory's row as this index sees it (None: absent, or stored without one)."""
        row = self._row(memory_id)
        return None if row is None else self._shared.items[row]

    def vector(self, memory_id: str) -> Vector | None:
        """The memory's vector as this index sees it, or None."""
        row = self._row(memory_id)
        return None if row is None else self._matrix[row]

    def fork(self) -> MemoryIndex:
        """The next version, for a write to change while searches go on reading this one:
        it shares the arrays and maps (a write appends rows past the ones this index sees,
        stamps deaths with a later epoch, or copies into new arrays when it grows or
        compacts), so a fork costs no copy. A fork of an index whose last fork was dropped
        unwritten starts from a copy of the live rows (its appends would clash)."""
        twin = MemoryIndex(self.dim, hnsw_above=self.hnsw_above)
        shared = self._shared
        if shared.latest != self._epoch or len(shared.ids) != self._rows:
            twin._epoch = self._epoch + 1
            twin._shared.latest = twin._epoch
            twin._append(self._live_rows())
            return twin
        twin._matrix, twin._died, twin._shared = self._matrix, self._died, shared
        twin._codes = self._codes
        twin._rows, twin._live, twin._graph = self._rows, self._live, self._graph
        twin._epoch = shared.latest = self._epoch + 1
        return twin

    def _live_rows(self) -> list[tuple[str, Vector, Row | None]]:
        shared = self._shared
        alive = np.flatnonzero(self._died[: self._rows] > self._epoch)
        return [(shared.ids[r], self._matrix[r], shared.items[r]) for r in alive.tolist()]

    def upsert(
        self, items: Iterable[tuple[str, Vector]], rows: Sequence[Row] | None = None
    ) -> None:
        """Add memories (a memory already here is replaced); `rows`: their view rows."""
        pairs = list(items)
        given = list(rows) if rows is not None else [None] * len(pairs)
        if len(given) != len(pairs):
            raise ValueError(f"rows: {len(given)} for {len(pairs)} memories")
        last = {m: (m, v, r) for (m, v), r in zip(pairs, given, strict=True)}  # one row an id
        if not last:
            return
        self.remove(last)
        self._append(list(last.values()))

    def _append(self, items: list[tuple[str, Vector, Row | None]]) -> None:
        if not items:
            return
        shared = self._shared
        start = self._rows
        needed = start + len(items)
        if needed > len(self._matrix):
            # Rows past the used ones are never read, so they are left unwritten (np.empty):
            # untouched pages of a large allocation are not resident.
            size = grown_rows(len(self._matrix), needed)
            grown = np.empty((size, self.dim), dtype=np.float32)
            grown[:start] = self._matrix[:start]
            died = np.full(size, NEVER, dtype=np.int64)
            died[:start] = self._died[:start]
            codes = np.zeros(size, dtype=np.int16)
            codes[:start] = self._codes[:start]
            self._matrix, self._died, self._codes = grown, died, codes
        for offset, (memory_id, vector, item) in enumerate(items):
            row = start + offset
            self._matrix[row] = vector
            self._died[row] = NEVER
            self._codes[row] = 0 if item is None else self._code(item.outcome)
            shared.ids.append(memory_id)
            shared.items.append(item)
            shared.prev.append(shared.row_of.get(memory_id, -1))
            shared.row_of[memory_id] = row
        self._rows = needed
        self._live += len(items)
        if self._graph is not None:
            added = np.arange(start, needed, dtype=np.uint64)
            self._graph.add(added, self._matrix[start:needed], threads=1)

    def remove(self, memory_ids: Iterable[str]) -> None:
        found = (self._row(m) for m in dict.fromkeys(memory_ids))
        rows = [r for r in found if r is not None]
        if not rows:
            return
        self._died[rows] = self._epoch  # dead from this index on; alive for older ones
        self._live -= len(rows)
        if self._graph is not None:
            self._graph.remove(np.asarray(rows, dtype=np.uint64))
        if self._rows > 1024 and self._live < self._rows // 2:
            self._compact()

    def _compact(self) -> None:
        """Copy the live rows into new arrays and maps: the indexes reading the old ones
        keep them, and this one owns its own from now on."""
        live = self._live_rows()
        self._matrix = np.zeros((max(64, len(live)), self.dim), dtype=np.float32)
        self._died = np.full(len(self._matrix), NEVER, dtype=np.int64)
        self._codes = np.zeros(len(self._matrix), dtype=np.int16)
        self._shared, self._graph = _Shared(), None
        self._shared.latest = self._epoch
        self._rows = self._live = 0
        self._append(live)

    def _code(self, outcome: str) -> int:
        codes = self._shared.codes
        code = codes.get(outcome)
        if code is None:
            code = codes[outcome] = len(codes) + 1
        return code

    def _candidates(
        self,
        query: Vector,
        count: int,
        scores: NDArray[np.float32] | None = None,
        outcome: str | None = None,
    ) -> list[tuple[str, float]]:
        if len(self) > self.hnsw_above:
            if self._graph is None:
                self._graph = Index(
                    ndim=self.dim,
                    metric="cos",
                    dtype="f32",
                    expansion_add=EXPANSION_ADD,
                    expansion_search=EXPANSION_SEARCH,
                )
                rows = np.flatnonzero(self._died[: self._rows] > self._epoch)
                self._graph.add(rows.astype(np.uint64), self._matrix[rows], threads=1)
            matches = self._graph.search(query, count, threads=1)
            keys = np.asarray(matches.keys, dtype=np.int64)
            found = keys[
                (keys < self._rows) & (self._died[np.minimum(keys, self._rows - 1)] > self._epoch)
            ]
            return self._rescored(found, query, count)
        used = self._rows
        # einsum's own loop, not BLAS: on this 2-core machine under load OpenBLAS's threads
        # made one 10,000 x 384 matrix-vector product take 54 ms at the median (waking its
        # worker thread) against 1.0 ms here; and a limit on BLAS threads would be global.
        if scores is None:
            sims = np.einsum("ij,j->i", self._matrix[:used], query)
        else:  # this query's row of `search_many`'s product (masked below: a copy)
            sims = np.array(scores[:used], dtype=np.float32)
        if self._live < used:  # rows removed or rewritten: a vector mask, not a loop
            sims[self._died[:used] <= self._epoch] = -np.inf
        if outcome is not None:  # rows of another outcome (or none known) never qualify
            code = self._shared.codes.get(outcome, -1)
            sims[self._codes[:used] != code] = -np.inf
        count = min(count, used)
        if count < used:
            # Every row that float32 rounding may have put on the wrong side of the cut too.
            kth = sims[np.argpartition(-sims, count - 1)[count - 1]]
            top = np.flatnonzero(sims >= kth - FLOAT32_SLACK)
        else:
            top = np.arange(used)
        return self._rescored(top[np.isfinite(sims[top])], query, count)

    def _rescored(
        self, rows: NDArray[np.int64], query: Vector, count: int
    ) -> list[tuple[str, float]]:
        """The best `count` of `rows` by float64 similarity, equal scores by id."""
        scores = cosines(self._matrix[rows], query)
        ids = self._shared.ids
        pairs = [(ids[r], float(s)) for r, s in zip(rows.tolist(), scores, strict=True)]
        return sorted(pairs, key=rank_key)[:count]

    def search(
        self,
        query: Vector,
        k: int,
        accept: Callable[[str], bool] | None = None,
        outcome: str | None = None,
    ) -> list[tuple[str, float]]:
        """Up to k (memory id, cosine similarity) pairs, best first, that pass `accept`.
        `outcome`: only rows stored with a memory of that outcome (a mask on the scan's
        scores; the graph's candidates are not masked, so `accept` must check it too)."""
        return self._search(query, k, accept, None, outcome)

    def search_many(
        self,
        queries: NDArray[np.float32],
        k: int,
        accepts: Sequence[Callable[[str], bool] | None],
        outcomes: Sequence[str | None] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """`search` of each of the (n, d) `queries` with its own filter, the same answers,
        from one matrix product of the queries with the index instead of one scan a query
        (a learner's batch probes its new memories at once: 32 scans of 10,000 x 384 cost
        about 38 ms of CPU, the product about 5). The product runs on one BLAS thread: the
        caller is background work, and OpenBLAS's second thread spins on the other core
        after it (the limit is the process's while it lasts; only this product is long)."""
        if len(queries) != len(accepts):
            raise ValueError(f"accepts: {len(accepts)} for {len(queries)} queries")
        wanted = list(outcomes) if outcomes is not None else [None] * len(queries)
        if len(wanted) != len(queries):
            raise ValueError(f"outcomes: {len(wanted)} for {len(queries)} queries")
        if len(self) > self.hnsw_above or len(self) == 0 or len(queries) < 2:
            return [
                self.search(q, k, a, o) for q, a, o in zip(queries, accepts, wanted, strict=True)
            ]
        with _blas().limit(limits=1, user_api="blas"):
            products = np.asarray(queries, dtype=np.float32) @ self._matrix[: self._rows].T
        return [
            self._search(query, k, accept, scores, outcome)
            for query, accept, scores, outcome in zip(
                queries, accepts, products, wanted, strict=True
            )
        ]

    def _search(
        self,
        query: Vector,
        k: int,
        accept: Callable[[str], bool] | None,
        scores: NDArray[np.float32] | None,
        outcome: str | None = None,
    ) -> list[tuple[str, float]]:
        size = len(self)
        if size == 0 or k <= 0:
            return []
        masked = outcome is not None and size <= self.hnsw_above  # the scan masks it
        want = k if accept is None else k * OVERSAMPLE
        while True:
            count = min(want, size)
            found = self._candidates(query, count, scores, outcome if masked else None)
            # Fewer than asked from a masked scan: every row of that outcome is in.
            exhausted = masked and len(found) < count
            if accept is not None:
                found = [(m, s) for m, s in found if accept(m)]
            if len(found) >= k or count >= size or exhausted:
                return sorted(found, key=rank_key)[:k]
            want *= OVERSAMPLE


@cache
def _blas() -> ThreadpoolController:
    """The process's BLAS libraries, found once (a scan of the loaded libraries)."""
    return ThreadpoolController()
