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

Callers known to arrive together (the loop's gathered retrievals, started at once on several
threads: `arriving`) would still split: the first to get here found no batch running and
embedded its query alone, the rest together after it. So the first of a group to find the
embedder free waits, up to `GROUP_WAIT_S`, until every other member of its group has asked (or
finished without asking: a result-cache hit), and embeds them in one forward.

Callers that are not a group but happen to overlap (concurrent HTTP requests, a server's
or a benchmark's client threads) announce themselves when their read starts (`coming`, from
the facade's read before its tenancy, version and view steps): the caller that finds the
embedder free while others are on their way waits up to `COMING_WAIT_S` for them to ask (or
leave without asking) before it embeds. Measured (`benchmarks/context_hop.py --clients`):
without it, 8 clients' misses averaged about 2 queries a forward; a lone caller never waits
(nobody else is coming).

A batch's end wakes every waiting caller (one condition): waking only the batch's own callers
and those of the oldest waiting query (a condition per text) was tried and not kept, as it
cost more CPU a request than it saved in wake-ups (docs/orchestrator.md). The time a thread
spends waiting here (for its group, or for a batch another caller embeds) is counted
(`waited_s`): the loop charges a retrieval its time less these waits, since the forward that
embeds a query is charged to the request whose thread runs it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from trifecta.context.sql import Vector

MAX_BATCH = 64  # queries per embedding call; the rest wait for the next one
# The longest the first of a group waits for the others (they run a retrieval's steps before
# its embedding: tenths of a ms alone, a few ms under the loop's load).
GROUP_WAIT_S = 0.01
# The longest the caller about to embed waits for announced callers (`coming`) to ask: a
# read's steps before its embedding take tenths of a ms alone, and a query that joins the
# forward saves most of a forward's CPU (one query about 4 ms, each further one well under 1).
COMING_WAIT_S = 0.003


class ArrivingGroup:
    """Callers started together whose queries should share a forward: each member counts as
    arrived when it asks for a vector or leaves its `arriving` block, whichever is first."""

    def __init__(self, members: int):
        if members < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        self._left = members
        self._cond = threading.Condition()

    def _arrive(self) -> None:
        with self._cond:
            self._left -= 1
            if self._left == 0:
                self._cond.notify()  # the one member that may wait: the first to embed

    def _wait_others(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._left <= 0, timeout)


@dataclass
class _Member:
    group: ArrivingGroup
    arrived: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arrive(self) -> None:
        with self.lock:  # once, whether by asking or by leaving
            if self.arrived:
                return
            self.arrived = True
        self.group._arrive()


_member: ContextVar[_Member | None] = ContextVar("trifecta_query_group", default=None)


@dataclass
class _Coming:
    """One announced caller (`QueryEmbeddings.coming`): counted until it asks or leaves."""

    cache: QueryEmbeddings
    arrived: bool = False


_coming: ContextVar[_Coming | None] = ContextVar("trifecta_query_coming", default=None)
_waits = threading.local()  # seconds this thread has waited in `QueryEmbeddings.vector`


def waited_s() -> float:
    """Seconds this thread has spent waiting for other callers in `QueryEmbeddings.vector`
    (its group's members, or a batch embedded on another thread), since it started: read it
    before and after a call to know that call's waits."""
    return float(getattr(_waits, "s", 0.0))


def _add_wait(seconds: float) -> None:
    _waits.s = waited_s() + seconds


@contextmanager
def arriving(group: ArrivingGroup) -> Iterator[None]:
    """Within the block this context is a member of `group`."""
    member = _Member(group)
    token = _member.set(member)
    try:
        yield
    finally:
        _member.reset(token)
        member.arrive()


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
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._coming = 0  # announced callers that have not asked (nor left) yet
        self._arrivals = threading.Condition(lock)  # the embedding caller waits on them
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

    @contextmanager
    def coming(self) -> Iterator[None]:
        """This thread may ask for a vector within the block: a caller about to embed waits
        (briefly) for it to ask, so that their queries share a forward. Leaving the block
        without asking (a result-cache hit, an error) counts as arriving. Inside another
        `coming` block of this cache it adds nothing (the caller is announced already)."""
        announced = _coming.get()
        if announced is not None and announced.cache is self and not announced.arrived:
            yield
            return
        mark = _Coming(self)
        with self._cond:
            self._coming += 1
        token = _coming.set(mark)
        try:
            yield
        finally:
            _coming.reset(token)
            with self._cond:
                self._arrive(mark)

    def _arrive(self, mark: _Coming | None) -> None:
        """Under the lock: an announced caller asked or left."""
        if mark is None or mark.arrived or mark.cache is not self:
            return
        mark.arrived = True
        self._coming -= 1
        if self._coming == 0:
            self._arrivals.notify_all()

    def vector(self, text: str) -> Vector:
        member = _member.get()
        with self._cond:
            self._arrive(_coming.get())
            found = self._vectors.get(text)
            counted = not getattr(self._quiet, "on", False)
            if found is not None:
                self._vectors.move_to_end(text)
                self.hits += counted
            else:
                self.misses += counted
                asked = self._slots.get(text)  # another caller's ask of the same text
                if asked is None:
                    asked = self._slots[text] = _Slot()
                    self._waiting.append(text)
        if member is not None:
            member.arrive()
        if found is not None:
            return found
        assert asked is not None  # a miss has its text's slot
        slot = asked
        while True:
            with self._cond:
                if not slot.done and self._busy:
                    started = time.perf_counter()
                    while not slot.done and self._busy:
                        self._cond.wait()
                    _add_wait(time.perf_counter() - started)
                if slot.done:
                    return _result(slot)
                self._busy = True
            if member is not None:
                # The first of its group here: the others' queries join this forward.
                started = time.perf_counter()
                member.group._wait_others(GROUP_WAIT_S)
                _add_wait(time.perf_counter() - started)
                member = None
            with self._cond:
                if self._coming > 0:  # others announced: let their queries join this forward
                    started = time.perf_counter()
                    self._arrivals.wait_for(lambda: self._coming <= 0, COMING_WAIT_S)
                    _add_wait(time.perf_counter() - started)
                # Embed what waits now (ours included, unless more than a batch came first:
                # then the next round takes ours).
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
