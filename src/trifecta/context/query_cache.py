"""Query embeddings: remembered by exact query text, and embedded together when they arrive
together.

Retrieval embeds the request's query; a prompt asked again (the loop's standing queries, a
dashboard polling the same question) is embedded once. The key is the exact text: the
embedder is deterministic, so a hit returns what embedding the text again would.

Misses are coalesced. One MiniLM forward over N short queries costs far less than N forwards
(measured here: about 6 ms a query in a batch of 16 against 20 ms alone, one torch thread), so
while one batch is being embedded, the queries of other requests wait and are embedded in the
next call, together. The first caller that finds its query waiting and no batch running
embeds every waiting query (group commit, as databases batch log flushes); nobody embeds
another caller's query after its own is done, so no request pays for more than one batch
behind it. A caller alone pays one call, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from trifecta.context.sql import Vector

MAX_BATCH = 64  # queries per embedding call; the rest wait for the next one


@dataclass
class _Slot:
    """One query text on its way to a vector; shared by every caller asking it meanwhile."""

    vector: Vector | None = None
    error: BaseException | None = None
    done: bool = False


class QueryEmbeddings:
    def __init__(self, embed: Callable[[Sequence[str]], list[Vector]], *, max_entries: int):
        self._embed = embed
        self.max_entries = max_entries
        self._vectors: OrderedDict[str, Vector] = OrderedDict()
        self._slots: dict[str, _Slot] = {}  # waiting or being embedded
        self._waiting: list[str] = []  # texts no batch has taken yet, in arrival order
        self._busy = False  # a caller is embedding a batch
        self._cond = threading.Condition()
        self.hits = self.misses = 0
        self.calls = 0  # embedding calls made (misses / calls: the mean batch)
        self._quiet = threading.local()  # set on a thread whose asks are not counted

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        """Asks of this thread inside the block count no hit or miss (the learning worker
        recomputing hot reads: the counters are the requests')."""
        self._quiet.on = True
        try:
            yield
        finally:
            self._quiet.on = False

    def vector(self, text: str) -> Vector:
        with self._cond:
            found = self._vectors.get(text)
            counted = not getattr(self._quiet, "on", False)
            if found is not None:
                self._vectors.move_to_end(text)
                self.hits += counted
                return found
            self.misses += counted
            slot = self._slots.get(text)
            if slot is None:
                slot = self._slots[text] = _Slot()
                self._waiting.append(text)
        while True:
            with self._cond:
                while not slot.done and self._busy:
                    self._cond.wait()
                if slot.done:
                    return _result(slot)
                # No batch is running and ours waits: embed what waits now (ours included,
                # unless more than a batch came first: then the next round takes ours).
                self._busy = True
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                self.calls += 1
            try:
                vectors = self._embed(batch)
            except BaseException as exc:
                self._finish(batch, None, exc)
                raise
            self._finish(batch, vectors, None)

    def known(self, text: str) -> Vector | None:
        """The remembered vector of this text, if any: never embeds, counts no hit or miss
        (the learn queue keys a request's memory by the vector its retrieval computed)."""
        with self._cond:
            return self._vectors.get(text)

    def _finish(
        self, batch: list[str], vectors: list[Vector] | None, error: BaseException | None
    ) -> None:
        with self._cond:
            for i, text in enumerate(batch):
                slot = self._slots.pop(text)
                slot.done, slot.error = True, error
                if vectors is not None:
                    slot.vector = vectors[i]
                    slot.vector.setflags(write=False)  # shared by every caller of the text
                    if self.max_entries:
                        self._vectors[text] = slot.vector
                        self._vectors.move_to_end(text)
            while len(self._vectors) > self.max_entries:
                self._vectors.popitem(last=False)
            self._busy = False
            self._cond.notify_all()  # the batch's callers, and one to take the next batch

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "entries": len(self._vectors),
                "calls": self.calls,
            }


def _result(slot: _Slot) -> Vector:
    if slot.error is not None:
        raise slot.error
    assert slot.vector is not None
    return slot.vector
