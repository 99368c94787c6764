"""Query embeddings remembered by exact query text (bounded, least recently used evicted).

Retrieval embeds the request's query; a prompt asked again (the loop's standing queries, a
dashboard polling the same question) is embedded once. The key is the exact text: the
embedder is deterministic, so a hit returns what embedding the text again would.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from trifecta.context.sql import Vector


class QueryEmbeddings:
    def __init__(self, embed: Callable[[Sequence[str]], list[Vector]], *, max_entries: int):
        self._embed = embed
        self.max_entries = max_entries
        self._vectors: OrderedDict[str, Vector] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def vector(self, text: str) -> Vector:
        with self._lock:
            found = self._vectors.get(text)
            if found is not None:
                self._vectors.move_to_end(text)
                self.hits += 1
                return found
            self.misses += 1
        vector = self._embed([text])[0]
        vector.setflags(write=False)  # shared by every caller that asks the same text
        if self.max_entries:
            with self._lock:
                self._vectors[text] = vector
                self._vectors.move_to_end(text)
                while len(self._vectors) > self.max_entries:
                    self._vectors.popitem(last=False)
        return vector

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "entries": len(self._vectors)}
