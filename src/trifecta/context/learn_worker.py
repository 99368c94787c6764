"""The learning worker: one thread per `ContextService` that drains the shards' learn queues.

It starts on the first `submit` or `drain` (or `ContextService.start_learning`), and first
drains every pending row of every shard it knows (the default shard and those of the shard
map): rows acknowledged by a process that died are learned by the next one (recovery).
Rows are taken oldest first and grouped per domain, so each domain learns in queue order;
a batch of one domain is planned outside the lock and written in one transaction
(`learn_batch`); the texts of every domain's batch are embedded together first. A memory keyed
by its query takes the vector its row was queued with: nothing is embedded for it. Then the
rows it wrote go to the live view of the domain and the domain's new version to the version
board, so the next retrieval reads them without a reload.

Workers of several processes may drain the same shard: the domain lock serialises their
transactions, and a row another worker already closed is skipped.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from trifecta.context.learn_batch import (
    BatchResult,
    StagedBatch,
    apply_batch,
    finish_batch,
    stage_batch,
)
from trifecta.context.learn_queue import LearnTicket, Queued
from trifecta.context.render import memory_item_line
from trifecta.context.sql import DomainMoved, Vector
from trifecta.context.store import ShardStore
from trifecta.context.tokens import count_tokens
from trifecta.context.trajectory import Trajectory
from trifecta.context.writes import Changes
from trifecta.core.errors import TrifectaError, Unavailable
from trifecta.core.logging import get_logger
from trifecta.core.protocols import Embedder

if TYPE_CHECKING:
    from trifecta.context.facade import ContextService

log = get_logger(__name__)
# A row that failed this many times for a reason other than a refusal is given up on.
MAX_ATTEMPTS = 20
T = TypeVar("T")
RECENT_TEXTS = 4096  # memory texts whose vectors the worker keeps (384 floats each: 6 MiB)


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (else autocast would emulate it,
    slower than float32)."""
    import torch

    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    avx512 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return bool(amx() or avx512())


def background_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority by `nice` (a Linux thread is a task of its
    own, so this leaves the process's other threads alone); a no-op at 0 or where that is
    not possible."""
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted
        log.info("learning worker keeps its priority", reason=str(exc))


def memory_line_tokens(changes: Changes) -> dict[str, int]:
    """The prompt line of each active memory a batch wrote, with its token count (counted
    now, or remembered: a reinforced memory's line was counted when it was added)."""
    lines = {memory_item_line(item) for item, status, _ in changes.memories if status == "active"}
    return {line: count_tokens(line) for line in lines}


class LearnWorker:
    def __init__(
        self,
        service: ContextService,
        *,
        embedder: Embedder | Callable[[], Embedder],
        batch: int,
        poll_s: float,
        chunk: int,
        linger_s: float = 0.0,
        bf16: bool | None = None,
    ):
        self.service = service
        self.bf16 = bf16  # None: decided on the first embedding (torch loads then)
        self._embedder = embedder
        self.batch = batch
        self.poll_s = poll_s
        self.chunk = chunk
        self.linger_s = linger_s
        self._draining = threading.Event()  # someone waits in drain(): no lingering
        self._hurry = threading.Event()  # a drain or a stop began: cut a linger short
        self._shards: set[str] = set()
        self._shards_lock = threading.Lock()
        self._working = threading.Lock()  # held while a batch is written and published
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.learned = self.failed = self.batches = 0
        self.reused = 0  # memory texts not embedded: their vector was known
        self.keyed = 0  # memories keyed by their prompt's embedding
        self.carried = 0  # ... whose vector came with the row (nothing embedded)
        # Memory texts this worker embedded lately and their vectors (only its thread uses
        # them): a standing query answered the same way distils the same text again.
        self._recent: OrderedDict[str, Vector] = OrderedDict()
        # Called with (shard url, domain, version, the prompt lines of the batch's memories
        # and their token counts) after a batch is committed and published: the learner
        # process tells the serving process through it (`learner.py`).
        self.on_learned: Callable[[str, str, int, dict[str, int]], None] | None = None

    @property
    def embedder(self) -> Embedder:
        # A class or a factory is called on first use (a class passes the protocol check).
        if isinstance(self._embedder, type) or not isinstance(self._embedder, Embedder):
            self._embedder = self._embedder()
        return self._embedder

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        with self._precision():
            return self._embed(texts)

    def _precision(self) -> AbstractContextManager[object]:
        """bfloat16 autocast where the CPU multiplies bfloat16 natively (AMX or AVX-512
        BF16): MiniLM's matrix products at 2-2.6x less CPU a text (5-7 ms against 13 ms,
        measured at batches of 8-32 on this machine's Xeon), with vectors at cosine 0.99998
        to the float32 ones, so a memory's neighbours are the same but for near-ties.
        Autocast is per thread: the request path's query embeddings stay float32."""
        if self.bf16 is None:
            self.bf16 = self.service.settings.learn_bfloat16 and native_bf16()
        if not self.bf16:
            return nullcontext()
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16)

    def _embed(self, texts: Sequence[str]) -> list[Vector]:
        """The worker's embeddings, in calls of at most `chunk` texts (short calls: the
        encoder is shared with the request path's query embeddings, which wait for it).
        The texts go in order of length, so a call pads its texts to about the same length
        (the encoder sorts within a call only); the vectors come back in the given order."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[Vector | None] = [None] * len(texts)
        for i in range(0, len(order), self.chunk):
            part = order[i : i + self.chunk]
            for k, vector in zip(part, self.embedder.embed([texts[k] for k in part]), strict=True):
                vectors[k] = vector
        return [v for v in vectors if v is not None]

    # -- control -----------------------------------------------------------------------
    def start(self) -> None:
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._watch([self.service.router.default_url])
            self._thread = threading.Thread(target=self._run, name="context-learn", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._hurry.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def notify(self, shard_url: str) -> None:
        """A row was queued on this shard: make sure the worker runs and looks there."""
        self._watch([shard_url])
        self.start()
        self._wake.set()

    def drain(self, timeout: float) -> bool:
        """Wait until no known shard has a pending row; False if `timeout` passed first."""
        self.start()
        deadline = time.monotonic() + timeout
        self._draining.set()
        self._hurry.set()
        try:
            while True:
                self._wake.set()
                if self.pending() == 0:
                    with self._working:  # a batch that just committed has published too
                        return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                with self._idle:
                    self._idle.wait(min(remaining, 0.5))
        finally:
            self._draining.clear()

    def pending(self) -> int:
        return sum(self._store(url).queue.pending_count() for url in self._known())

    def stats(self) -> dict[str, int]:
        return {
            "learned": self.learned,
            "failed": self.failed,
            "batches": self.batches,
            "vectors_reused": self.reused,
            "keyed_by_query": self.keyed,
            "query_vectors_carried": self.carried,
        }

    # -- the loop ----------------------------------------------------------------------
    def _watch(self, urls: Sequence[str]) -> None:
        with self._shards_lock:
            self._shards.update(urls)

    def _known(self) -> list[str]:
        with self._shards_lock:
            return sorted(self._shards)

    def _store(self, url: str) -> ShardStore:
        return self.service.router.store(url)

    def _run(self) -> None:
        background_priority(self.service.settings.learn_nice)
        self._refresh_shards()
        while not self._stop.is_set():
            self._wake.clear()
            left = 0  # rows read but not learned this round (past a domain's batch)
            for url in self._known():
                try:
                    left += self._drain_shard(self._store(url))
                except (SQLAlchemyError, TrifectaError) as exc:  # the shard is unreachable
                    log.warning("learn queue unreadable", shard=url, error=str(exc))
                except Exception:  # a bug must not end the worker: rows stay queued
                    log.exception("learning failed", shard=url)
                    self._stop.wait(1.0)
            with self._idle:
                self._idle.notify_all()
            if left:
                continue  # a backlog: go on at once
            if not self._wake.wait(self.poll_s):
                self._refresh_shards()
            elif not self._draining.is_set():
                # Woken by a submit: let a few more arrive, so one embedding call and one
                # transaction serve several trajectories (each call has a fixed cost).
                # A drain that begins meanwhile cuts the wait short: it waited the linger
                # out before (0.2 s of 0.45-0.65 s rounds in benchmarks/context_hop.py).
                self._hurry.wait(self.linger_s)
                self._hurry.clear()

    def _refresh_shards(self) -> None:
        try:
            self._watch(self.service.shard_map.urls())
        except SQLAlchemyError as exc:
            log.warning("shard map unreadable", error=str(exc))

    def _drain_shard(self, store: ShardStore) -> int:
        limit = 4 * self.batch
        rows = store.queue.pending(limit=limit)
        by_domain: dict[str, list[Queued]] = {}
        for row in rows:  # queue order within each domain
            by_domain.setdefault(row.domain, []).append(row)
        # The roles run per domain, then the texts of every domain's batch are embedded
        # together: one forward over several short texts costs far less than one each.
        staged = [
            (queued, batch)
            for domain, queued in by_domain.items()
            if (batch := self._stage(store, domain, queued[: self.batch])) is not None
        ]
        texts = [text for _, batch in staged for text in batch.texts]
        vectors = iter(self.embed(texts))
        for queued, batch in staged:
            mine = [next(vectors) for _ in batch.texts]
            self._remember(batch.memory_texts, mine[len(batch.delta_texts) :])
            with self._working:
                self._learn(store, queued[: self.batch], batch, mine)
        # Rows left for the next round: past a domain's batch, or past what one read takes.
        # Only those call for a round at once; rows that arrive meanwhile wait for the linger.
        past = sum(max(0, len(queued) - self.batch) for queued in by_domain.values())
        return past + int(len(rows) >= limit)

    def _stage(
        self, store: ShardStore, domain: str, queued: Sequence[Queued]
    ) -> StagedBatch | None:
        broken = [q for q in queued if q.trajectory is None]
        store.queue.settle([q.id for q in broken], "failed", broken[0].problem if broken else None)
        rows = [(q.id, q.trajectory) for q in queued if q.trajectory is not None]
        if not rows:
            return None
        keys = {q.id: q.query_vector for q in queued if q.query_vector is not None}
        return self._guarded(
            store,
            domain,
            queued,
            lambda: stage_batch(self.service, domain, rows, self._recalled, keys),
        )

    def _recalled(self, text: str) -> Vector | None:
        found = self._recent.get(text)
        if found is not None:
            self._recent.move_to_end(text)
        return found

    def _remember(self, texts: Sequence[str], vectors: Sequence[Vector]) -> None:
        for text, vector in zip(texts, vectors, strict=True):
            self._recent[text] = vector
            self._recent.move_to_end(text)
        while len(self._recent) > RECENT_TEXTS:
            self._recent.popitem(last=False)

    def _learn(
        self,
        store: ShardStore,
        queued: Sequence[Queued],
        batch: StagedBatch,
        vectors: Sequence[Vector],
    ) -> None:
        domain = batch.domain

        def write() -> BatchResult:
            plans = finish_batch(self.service, batch, vectors)
            return apply_batch(store, domain, plans, self.service.settings)

        result = self._guarded(store, domain, queued, write)
        if result is None:
            return
        # Counted here, off the request path: the first request to render a memory of the
        # batch finds its line's count (in the serving process: sent with `on_learned`).
        lines = memory_line_tokens(result.changes)
        self.service.views.apply(domain, result.changes)
        # The reads asked since the last batch, answered at the new version before anyone
        # can ask for it (`hot_reads.py`): their next ask is a cache hit.
        self.service.refresh_hot(domain, result.changes.version)
        self.service.versions.publish(domain, result.changes.version)
        if self.on_learned is not None:
            self.on_learned(store.url, domain, result.changes.version, lines)
        self.learned += result.done
        self.failed += result.failed
        self.reused += batch.reused
        self.keyed += batch.keyed
        self.carried += batch.carried
        self.batches += 1

    def _guarded(
        self, store: ShardStore, domain: str, queued: Sequence[Queued], step: Callable[[], T]
    ) -> T | None:
        """`step`, or None after handling why it could not run: the domain moved (its rows
        go to the new shard), the shard is unreachable for now (they stay pending), or the
        batch was refused as a whole (they fail)."""
        rows = [(q.id, q.trajectory) for q in queued if q.trajectory is not None]
        try:
            return step()
        except DomainMoved:
            self._forward(store, domain, [q for q in queued if q.trajectory is not None])
        except (Unavailable, SQLAlchemyError) as exc:  # transient: keep the rows pending
            self._retry(store, queued, str(exc))
        except TrifectaError as exc:  # refused as a whole (e.g. the capsule was removed)
            store.queue.settle([r for r, _ in rows], "failed", exc.one_line())
            self.failed += len(rows)
        return None

    def _forward(self, store: ShardStore, domain: str, rows: Sequence[Queued]) -> None:
        """The domain moved: queue the rows on its new shard (idempotent per trajectory id),
        with their query vectors, then close them here."""
        self.service.router.invalidate(domain)
        for row in rows:
            assert row.trajectory is not None  # the caller passes parsed rows only

            def requeue(
                target: ShardStore,
                queued: Trajectory = row.trajectory,
                key: Vector | None = row.query_vector,
            ) -> LearnTicket:
                return target.queue.enqueue(domain, queued, key)

            self.service.on_shard(domain, requeue)
        store.queue.settle([r.id for r in rows], "moved")
        self._watch([self.service.router.url_for(domain)])

    def _retry(self, store: ShardStore, queued: Sequence[Queued], error: str) -> None:
        log.warning("learning postponed", rows=len(queued), error=error)
        store.queue.retry_later([q.id for q in queued], error)
        given_up = [q.id for q in queued if q.attempts + 1 >= MAX_ATTEMPTS]
        store.queue.settle(given_up, "failed", f"gave up after {MAX_ATTEMPTS} attempts: {error}")
        self._stop.wait(min(5.0, 0.1 * 2 ** min(q.attempts for q in queued)))
