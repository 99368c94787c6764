"""Hot reads: the reads of a domain asked again and again, recomputed by the learning worker.

A learned batch moves its domain's version, so the next ask of every cached read misses the
result cache and is computed on the request path, although the view's standing search kept
its memories exact and the answer costs little more than rendering. For a read that is hot
(asked at least twice, and asked again since the domain's last batch) the learning worker
computes the answer at the new version itself, after applying its batch to the view and
before publishing the version, so the next ask finds it in the result cache. A read nobody
asked between two batches is not recomputed at the next (a fresh prompt costs nothing
here), and at most `per_write` reads are recomputed per batch, the most recently asked
first.

Only background writes refresh (the learning worker): a synchronous write (a delta, added
memories) would pay the recomputation on its own request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from trifecta.context.standing import FirstAsks


class Keyed(Protocol):
    """What a hot read is known by: its domain and its result-cache key."""

    @property
    def domain(self) -> str: ...

    @property
    def key(self) -> str: ...


R = TypeVar("R", bound=Keyed)


@dataclass
class _Entry(Generic[R]):
    read: R
    asked_at: int  # the domain's batch count at its last ask
    asks: int = 1


@dataclass
class _Domain(Generic[R]):
    reads: OrderedDict[str, _Entry[R]]
    firsts: FirstAsks  # reads asked once, by hash
    batches: int = 0  # writes that took its hot reads


class HotReads(Generic[R]):
    """Per domain, the reads asked lately (least recently asked dropped past `kept`), for
    the `domains` domains asked lately. Thread-safe: request threads, the event loop and
    the learning worker call it.

    With `first_asks` a read is kept from its second ask: the last `first_asks` first asks
    of a domain are remembered by hash (about 0.1 KB each, `standing.FirstAsks`) instead of
    as the read and its closure (its request, the prompt among it), so prompts asked once,
    most of a generated stream, never fill `kept` (issue 16: a soak's memory grew with
    them). A read asked once is never taken either way. 0 keeps every read from its first
    ask."""

    def __init__(self, *, kept: int, per_write: int, domains: int = 256, first_asks: int = 0):
        self.kept = kept
        self.per_write = per_write
        self.max_domains = domains
        self.first_asks = first_asks
        self._domains: OrderedDict[str, _Domain[R]] = OrderedDict()
        self._lock = threading.Lock()
        self.refreshed = 0  # reads recomputed by a writer

    def asked(self, read: R) -> None:
        """Count an ask of `read` (a hit or a miss alike)."""
        if self.kept == 0 or self.per_write == 0:
            return
        with self._lock:
            domain = self._domains.get(read.domain)
            if domain is None:
                domain = self._domains[read.domain] = _Domain(
                    OrderedDict(), FirstAsks(self.first_asks)
                )
                while len(self._domains) > self.max_domains:
                    self._domains.popitem(last=False)
            self._domains.move_to_end(read.domain)
            reads = domain.reads
            entry = reads.get(read.key)
            if entry is None:
                if not domain.firsts.again(hash(read.key)):
                    return  # a first ask: remembered by hash only
                reads[read.key] = _Entry(read, domain.batches, 2 if self.first_asks else 1)
                while len(reads) > self.kept:
                    reads.popitem(last=False)
                return
            entry.asks += 1
            entry.asked_at = domain.batches
            reads.move_to_end(read.key)

    def take(self, domain: str) -> list[R]:
        """The domain's hot reads to recompute after a write: asked twice, and asked since
        the domain's last write took its hot reads; most recently asked first."""
        with self._lock:
            held = self._domains.get(domain)
            if held is None:
                return []
            since = held.batches
            held.batches += 1
            taken: list[R] = []
            for entry in reversed(held.reads.values()):  # most recently asked first
                if len(taken) == self.per_write or entry.asked_at < since:
                    break  # the rest were asked before the last write
                if entry.asks >= 2:
                    taken.append(entry.read)
            self.refreshed += len(taken)
            return taken

    def stats(self) -> dict[str, int]:
        with self._lock:
            held = sum(len(domain.reads) for domain in self._domains.values())
        return {"hot_reads": held, "hot_refreshed": self.refreshed}
