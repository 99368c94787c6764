"""Nearest-neighbour search over one domain's memory embeddings.

Up to `hnsw_above` vectors (50,000 by default) the index scans a contiguous float32 matrix
exactly: for a 10,000-item domain that is one 10,000 x 384 matrix-vector product, about a
millisecond, always exact and free to update. Above it the index also keeps a usearch HNSW
graph (built on first need, then updated in place) and searches that instead.

Filters (outcome, recency) are applied to an oversampled candidate list that is widened
until k items pass or the whole index was searched.

The candidates' similarities are then computed again in float64 (`cosines`): float32 matrix
products round differently depending on a row's place in the matrix, so two copies of one
vector could score a bit apart and order by where they are stored. In float64 the same
vectors score the same wherever they are, equal scores order by memory id (`rank_key`), and
a search kept up to date by `standing.py` orders exactly as a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import NDArray

from trifecta.core.shared_libstdcxx import share_libstdcxx

share_libstdcxx()  # before usearch's extension loads: the module says why

from usearch.index import Index  # noqa: E402

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


class MemoryIndex:
    def __init__(self, dim: int, *, hnsw_above: int = HNSW_ABOVE):
        self.dim = dim
        self.hnsw_above = hnsw_above
        self._matrix: NDArray[np.float32] = np.zeros((64, dim), dtype=np.float32)
        self._ids: list[str | None] = []  # row -> memory id (None: removed)
        self._row_of: dict[str, int] = {}
        self._graph: Index | None = None

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self._row_of

    @property
    def graph_shared(self) -> bool:
        """Whether a `fork` would share a usearch graph (kept, or built at the next search)
        that a write changes in place: then a search must not run beside a write."""
        return self._graph is not None or len(self) > self.hnsw_above

    def fork(self) -> MemoryIndex:
        """A copy for a write to change while searches go on reading this one. The matrix
        is shared: a write only fills rows past the ones this index uses, or copies it into
        a new one (growing, compacting), so what this index reads never changes. The row
        maps are copied (about 0.2 ms at 10,000 rows); a usearch graph is shared
        (`graph_shared`)."""
        twin = MemoryIndex(self.dim, hnsw_above=self.hnsw_above)
        twin._matrix = self._matrix
        twin._ids = list(self._ids)
        twin._row_of = dict(self._row_of)
        twin._graph = self._graph
        return twin

    def upsert(self, items: Iterable[tuple[str, Vector]]) -> None:
        items = list(items)
        if not items:
            return
        self.remove(memory_id for memory_id, _ in items)
        start = len(self._ids)
        needed = start + len(items)
        if needed > len(self._matrix):
            # Rows past the used ones are never read, so they are left unwritten (np.empty):
            # untouched pages of a large allocation are not resident.
            grown = np.empty((grown_rows(len(self._matrix), needed), self.dim), dtype=np.float32)
            grown[:start] = self._matrix[:start]
            self._matrix = grown
        for offset, (memory_id, vector) in enumerate(items):
            self._matrix[start + offset] = vector
            self._ids.append(memory_id)
            self._row_of[memory_id] = start + offset
        if self._graph is not None:
            rows = np.arange(start, needed, dtype=np.uint64)
            self._graph.add(rows, self._matrix[start:needed], threads=1)

    def remove(self, memory_ids: Iterable[str]) -> None:
        rows = [self._row_of.pop(m) for m in memory_ids if m in self._row_of]
        for row in rows:
            self._ids[row] = None
        if rows and self._graph is not None:
            self._graph.remove(np.asarray(rows, dtype=np.uint64))
        if len(self._ids) > 1024 and len(self._row_of) < len(self._ids) // 2:
            self._compact()

    def _compact(self) -> None:
        live = [(m, self._matrix[r]) for r, m in enumerate(self._ids) if m is not None]
        self._matrix = np.zeros((max(64, len(live)), self.dim), dtype=np.float32)
        self._ids, self._row_of, self._graph = [], {}, None
        self.upsert(live)

    def _candidates(self, query: Vector, count: int) -> list[tuple[str, float]]:
        if len(self) > self.hnsw_above:
            if self._graph is None:
                self._graph = Index(
                    ndim=self.dim,
                    metric="cos",
                    dtype="f32",
                    expansion_add=EXPANSION_ADD,
                    expansion_search=EXPANSION_SEARCH,
                )
                rows = [r for r, m in enumerate(self._ids) if m is not None]
                self._graph.add(np.asarray(rows, dtype=np.uint64), self._matrix[rows], threads=1)
            matches = self._graph.search(query, count, threads=1)
            found = np.asarray(
                [int(k) for k in matches.keys if self._ids[int(k)] is not None], dtype=np.int64
            )
            return self._rescored(found, query, count)
        used = len(self._ids)
        # einsum's own loop, not BLAS: on this 2-core machine under load OpenBLAS's threads
        # made one 10,000 x 384 matrix-vector product take 54 ms at the median (waking its
        # worker thread) against 1.0 ms here; and a limit on BLAS threads would be global.
        sims = np.einsum("ij,j->i", self._matrix[:used], query)
        dead = [r for r, m in enumerate(self._ids) if m is None] if len(self) < used else []
        if dead:
            sims[dead] = -np.inf
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
        pairs = [(self._ids[r] or "", float(s)) for r, s in zip(rows, scores, strict=True)]
        return sorted(pairs, key=rank_key)[:count]

    def search(
        self, query: Vector, k: int, accept: Callable[[str], bool] | None = None
    ) -> list[tuple[str, float]]:
        """Up to k (memory id, cosine similarity) pairs, best first, that pass `accept`."""
        size = len(self)
        if size == 0 or k <= 0:
            return []
        want = k if accept is None else k * OVERSAMPLE
        while True:
            count = min(want, size)
            found = self._candidates(query, count)
            if accept is not None:
                found = [(m, s) for m, s in found if accept(m)]
            if len(found) >= k or count >= size:
                return sorted(found, key=rank_key)[:k]
            want *= OVERSAMPLE
