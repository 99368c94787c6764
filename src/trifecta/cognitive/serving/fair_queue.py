"""Per-capsule queues served by weighted fair queuing, and plain FIFO for comparison.

Start-time fair queuing (Goyal, Vin and Cheng, SIGCOMM 1996): each request gets a start tag
`S = max(V, F_prev)` and a finish tag `F = S + cost / share`, where `F_prev` is the finish tag
of the capsule's previous request and `V` the start tag of the last request served; the
request with the smallest start tag goes next. While capsules are backlogged, each receives
service (here: prompt + completion tokens) in proportion to its share, whatever its arrival
rate; an idle capsule builds up no credit, so it cannot burst past the others when it returns.

Each capsule keeps its own FIFO; a heap orders the capsules by the tag of their first request.
`pop(eligible)` skips capsules the caller holds back (those at their share of batch slots).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class RequestQueue(Protocol[T]):
    def push(self, tenant: str, item: T, *, cost: float, share: float) -> None: ...

    def pop(self, eligible: Callable[[str], bool] | None = None) -> T | None: ...

    def remove(self, match: Callable[[T], bool]) -> T | None: ...

    def backlog(self, tenant: str) -> int: ...

    def __len__(self) -> int: ...


@dataclass
class _Queued(Generic[T]):
    start: float
    seq: int
    item: T


class FairQueue(Generic[T]):
    """Weighted fair queuing over tenants (capsules), by start-time tags."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[_Queued[T]]] = {}
        self._heads: list[tuple[float, int, str]] = []  # (start tag, seq, tenant) of each head
        self._last_finish: dict[str, float] = {}
        self._virtual_time = 0.0
        self._seq = itertools.count()
        self._size = 0

    def _tag(self, tenant: str, cost: float, share: float) -> float:
        if share <= 0:
            raise ValueError("share must be positive")
        start = max(self._virtual_time, self._last_finish.get(tenant, 0.0))
        self._last_finish[tenant] = start + cost / share
        return start

    def push(self, tenant: str, item: T, *, cost: float, share: float) -> None:
        entry = _Queued(self._tag(tenant, cost, share), next(self._seq), item)
        queue = self._queues.setdefault(tenant, deque())
        queue.append(entry)
        if len(queue) == 1:
            heapq.heappush(self._heads, (entry.start, entry.seq, tenant))
        self._size += 1

    def _valid(self, head: tuple[float, int, str]) -> bool:
        queue = self._queues.get(head[2])
        return bool(queue) and queue[0].seq == head[1]  # type: ignore[index]

    def pop(self, eligible: Callable[[str], bool] | None = None) -> T | None:
        """The next request by tag among tenants `eligible` allows (all by default)."""
        skipped = []
        found: _Queued[T] | None = None
        try:
            while self._heads:
                head = heapq.heappop(self._heads)
                if not self._valid(head):
                    continue
                if eligible is not None and not eligible(head[2]):
                    skipped.append(head)
                    continue
                queue = self._queues[head[2]]
                found = queue.popleft()
                if queue:
                    heapq.heappush(self._heads, (queue[0].start, queue[0].seq, head[2]))
                break
        finally:  # even if `eligible` raises: a lost head would strand its tenant's queue
            for head in skipped:
                heapq.heappush(self._heads, head)
        if found is None:
            return None
        self._virtual_time = max(self._virtual_time, found.start)
        self._size -= 1
        return found.item

    def remove(self, match: Callable[[T], bool]) -> T | None:
        """Take out the first queued item that `match`es (a request cancelled while waiting)."""
        for tenant, queue in self._queues.items():
            for entry in queue:
                if match(entry.item):
                    was_head = queue[0] is entry
                    queue.remove(entry)
                    self._size -= 1
                    if was_head and queue:
                        heapq.heappush(self._heads, (queue[0].start, queue[0].seq, tenant))
                    return entry.item
        return None

    def backlog(self, tenant: str) -> int:
        queue = self._queues.get(tenant)
        return len(queue) if queue else 0

    def __len__(self) -> int:
        return self._size


class FifoQueue(FairQueue[T]):
    """First come, first served, ignoring shares: the baseline fair queuing is measured against."""

    def _tag(self, tenant: str, cost: float, share: float) -> float:
        return float(next(self._seq))
