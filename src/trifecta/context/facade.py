"""`ContextService`: the one API of the context layer, for the orchestrator and HTTP alike.

Every call names a capsule; the service resolves the domain it may read or write
(`Tenancy`), routes to the domain's shard (`ShardRouter`, re-routing when a move fenced the
old one), and answers reads from the in-process views and the version-keyed result cache
(`cache.py`) unless caching is off, in which case every read scans the shard.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from trifecta.context.cache import ResultCache, VersionBoard, connect_redis, request_key
from trifecta.context.deltas import AddOp, Delta, DeltaResult, UpdateOp
from trifecta.context.hot_reads import HotReads
from trifecta.context.learn_batch import plan_memories, with_capsule
from trifecta.context.learn_queue import LearnTicket, QueueRow
from trifecta.context.learn_worker import LearnWorker
from trifecta.context.learner_process import LearnerProcess, learner_config
from trifecta.context.learning import LearnResult, learn
from trifecta.context.memory import memory_text
from trifecta.context.models import (
    AddMemoriesResult,
    DomainStats,
    MemoryDraft,
    MemoryQuery,
    MemorySearchResult,
    PlaybookView,
    RenderedPlaybook,
    RenderRequest,
    Retrieval,
    RetrieveRequest,
)
from trifecta.context.query_cache import QueryEmbeddings
from trifecta.context.render import render_bullets, render_context
from trifecta.context.settings import ContextSettings
from trifecta.context.shards import ShardMap, ShardRouter
from trifecta.context.sql import DomainMoved, Vector
from trifecta.context.store import ShardStore
from trifecta.context.tenancy import Tenancy
from trifecta.context.trajectory import Trajectory
from trifecta.context.views import DomainReader, StoreReader, ViewCache
from trifecta.core.db import get_engine
from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.core.logging import get_logger
from trifecta.core.protocols import Embedder, LanguageModel
from trifecta.core.settings import get_settings
from trifecta.fleet.registry import CapsuleRegistry

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
log = get_logger(__name__)


@dataclass(frozen=True)
class Read(Generic[M]):
    """One read, planned after the tenancy check: its domain, its cache key, the result type
    and how to compute the result from a domain reader."""

    domain: str
    key: str
    model: type[M]
    compute: Callable[[DomainReader], M]
    query: str | None = None  # the text it embeds, if any


class ContextService:
    def __init__(
        self,
        *,
        control_url: str | None = None,
        registry: CapsuleRegistry | None = None,
        embedder: Embedder | Callable[[], Embedder] | None = None,
        learning_embedder: Embedder | Callable[[], Embedder] | None = None,
        language_model: LanguageModel | None = None,
        redis_url: str | None = None,
        settings: ContextSettings | None = None,
        cache: bool | None = None,
    ):
        core = get_settings()
        self.settings = settings or ContextSettings()
        self.control_url = control_url or core.db_url
        self.shard_map = ShardMap(self.control_url)
        self.router = ShardRouter(
            self.shard_map, self.settings.default_shard_url or self.control_url
        )
        self.registry = registry or CapsuleRegistry(get_engine(self.control_url))
        self.tenancy = Tenancy(self.registry, self.shard_map, ttl_s=self.settings.tenancy_ttl_s)
        self.language_model = language_model
        # An embedder, or a factory called on first use (the model takes a second to load).
        self._embedder = embedder
        # The learning worker embeds with a model instance of its own by default (one call
        # at a time per instance: a retrieval must not queue behind a batch of memories).
        # An embedder that was handed in is shared unless a learning one is handed in too.
        if learning_embedder is None and embedder is None:
            from trifecta.core.embeddings import MiniLMEmbedder

            learning_embedder = MiniLMEmbedder
        self.cache_enabled = self.settings.cache if cache is None else cache
        redis_url = redis_url if redis_url is not None else core.redis_url
        self.redis = connect_redis(redis_url, self.settings.redis_timeout_s) if redis_url else None
        # Writers publish versions whether or not this process caches: other replicas may.
        # A process that caches learns versions from a pub/sub feed, not a GET per read.
        self.versions = VersionBoard(
            self.redis, ttl_s=self.settings.version_ttl_s, feed=self.cache_enabled
        )
        self.results = ResultCache(
            self.redis, max_entries=self.settings.cache_entries, ttl_s=self.settings.cache_ttl_s
        )
        self.views = ViewCache()
        # The reads asked again and again, which the learning worker recomputes at each
        # version it publishes (`hot_reads.py`): off with the cache.
        self.hot_reads: HotReads[Read[Any]] = HotReads(
            kept=self.settings.hot_reads_kept,
            per_write=self.settings.hot_reads_refreshed if self.cache_enabled else 0,
            first_asks=self.settings.standing_searches_first_asks,
        )
        # With caching off every read embeds and scans afresh (the uncached baseline).
        self.query_vectors = QueryEmbeddings(
            self.embed, max_entries=self.settings.query_cache_entries if self.cache_enabled else 0
        )
        # The learning worker: in a process of its own by default (`learner_process.py`),
        # else a thread of this one (the setting, or parts that cannot cross a process).
        config = learner_config(
            settings=self.settings,
            control_url=self.control_url,
            redis_url=redis_url,
            embedder=learning_embedder or embedder,
            language_model=language_model,
        )
        self.learner: LearnWorker | LearnerProcess = (
            LearnerProcess(self, config)
            if config is not None
            else LearnWorker(
                self,
                embedder=learning_embedder or (lambda: self.embedder),
                batch=self.settings.learn_batch,
                poll_s=self.settings.learn_poll_s,
                chunk=self.settings.embed_chunk,
                linger_s=self.settings.learn_linger_s,
            )
        )

    # -- plumbing ----------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from trifecta.core.embeddings import get_embedder

            self._embedder = get_embedder
        if not isinstance(self._embedder, Embedder):
            self._embedder = self._embedder()
        return self._embedder

    def warm_up(self) -> None:
        """Load the embedder now rather than on the first request that needs it (and start
        a learner process: it loads its own model, which takes seconds)."""
        if isinstance(self.learner, LearnerProcess):
            self.learner.start()
        else:
            # The worker's own model too: loaded at its first batch, it took seconds of CPU
            # beside the retrieves of the first requests that learned (py-spy, loop workload).
            self.learner.embed(["warm up"])
        self.embed(["warm up"])

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        return list(self.embedder.embed(list(texts))) if texts else []

    def on_shard(self, domain: str, work: Callable[[ShardStore], T]) -> T:
        """Run `work` on the domain's shard; if a move fenced that shard, re-route and retry
        until the move switches the map (or `move_retry_s` passes)."""
        deadline = time.monotonic() + self.settings.move_retry_s
        pause = 0.005
        while True:
            store = self.router.store_for(domain)
            try:
                return work(store)
            except DomainMoved as moved:
                self.router.invalidate(domain)
                if self.router.url_for(domain) != store.url:
                    continue  # the map already points at the new shard
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"{moved}; the shard map has not switched yet", field="domain"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.2)

    def current_version(self, domain: str) -> int:
        version = self.versions.get(domain)
        if version is None:
            version = self.on_shard(domain, lambda store: store.version(domain))
            self.versions.publish(domain, version)
        return version

    def run(self, read: Read[M]) -> M:
        """The result of a planned read: from the result cache, else computed from the
        domain's view (cache on) or straight from its shard (cache off)."""
        with self._coming(read):
            return self._run(read)

    def _coming(self, read: Read[Any]) -> AbstractContextManager[None]:
        """A read that embeds its query announces it: a concurrent miss about to embed
        waits briefly for it, and they share one forward (`query_cache.py`)."""
        return self.query_vectors.coming() if read.query is not None else nullcontext()

    def _run(self, read: Read[M]) -> M:
        domain = read.domain
        if not self.cache_enabled:
            return self.on_shard(domain, lambda store: read.compute(StoreReader(store, domain)))
        self.hot_reads.asked(read)
        version = self.current_version(domain)
        shared = partial(self._dear, read, version)  # asked after a miss in the process
        hit = self.results.get(domain, version, read.key, read.model, shared=shared)
        if hit is not None:
            return hit
        value = self._compute(read, version)
        self.results.put(domain, version, read.key, value)
        return value

    def run_json(self, read: Read[M], *, asked: bool = False) -> bytes:
        """`run`, as the JSON an HTTP answer carries (a cached result's bytes as stored).
        `asked`: `cached_json` already counted this ask (and looked in this process's
        cache; here it is looked up in Redis if `_dear`, then computed). A computed
        result goes to Redis from the sharer thread (`ResultCache.put`), so the computed
        path makes at most one Redis round trip, the GET: under load each one waits for
        the Redis process, then for the interpreter lock and a core."""
        with self._coming(read):
            return self._run_json(read, asked)

    def _run_json(self, read: Read[M], asked: bool) -> bytes:
        domain = read.domain
        if not self.cache_enabled:
            return self._run(read).model_dump_json().encode()
        if not asked:
            self.hot_reads.asked(read)
        version = self.current_version(domain)
        shared = partial(self._dear, read, version)
        body = self.results.get_body(domain, version, read.key, shared=shared)
        if body is not None:
            return body
        return self.results.put(domain, version, read.key, self._compute(read, version)).json()

    def _dear(self, read: Read[M], version: int) -> bool:
        """Whether computing the read here costs more than a Redis round trip, so that
        another replica's copy is worth looking for: the query must be embedded (a model
        call) or the domain's view is behind `version` (a shard read). Else what is left is
        a search of the view and a render (0.2 ms of CPU for a retrieve), and under load a
        GET waited milliseconds for the Redis process to be scheduled."""
        if read.query is not None and self.query_vectors.known(read.query) is None:
            return True
        return not self.views.holds(read.domain, version)

    def _compute(self, read: Read[M], version: int) -> M:
        """The read computed from the domain's view brought up to `version` (its standing
        searches make this cheap after a write: see `views.py`)."""
        domain = read.domain
        view = self.on_shard(
            domain, lambda store: self.views.get(domain, lambda _d: store, version)
        )
        return read.compute(view)

    @property
    def fast_reads(self) -> bool:
        """Whether a cache hit can be found without touching a database: cache on and the
        domain versions in Redis."""
        return self.cache_enabled and self.redis is not None

    def cached_json(self, read: Read[M]) -> bytes | None:
        """The result's JSON if this process's cache holds it for the domain's version
        published in Redis, else None (also with no Redis): a probe of the version board
        and of the in-process cache, cheap enough for an event loop. Redis is not asked
        for the result here: a blocking GET on the event loop stalled every request behind
        it (up to 98 ms beside the learning worker, the benchmark's loop workload); the
        thread pool asks on a miss (`run_json`)."""
        if not self.cache_enabled:
            return None
        self.hot_reads.asked(read)
        version = self.versions.get(read.domain)
        if version is None:
            return None
        return self.results.get_body(read.domain, version, read.key, shared=False)

    def refresh_hot(self, domain: str, version: int) -> int:
        """Compute the domain's hot reads at `version` into the result cache (the learning
        worker, after applying a batch to the view, before publishing `version`), so that
        their next ask is a hit; how many. A failure leaves the rest to their next ask."""
        done = 0
        with self.query_vectors.uncounted():  # the figures count the requests' own asks
            for read in self.hot_reads.take(domain):
                try:
                    self.results.put(domain, version, read.key, self._compute(read, version))
                except Exception as exc:  # the batch is committed: never fail it for this
                    log.warning("hot read not refreshed", domain=domain, error=str(exc))
                    break
                done += 1
        return done

    # -- reads -------------------------------------------------------------------------
    def playbook(self, capsule_id: str, domain: str | None = None) -> PlaybookView:
        """The active bullets of the capsule's (or a shared) domain, with their counters."""
        return self.run(self.plan_playbook(capsule_id, domain))

    def plan_playbook(self, capsule_id: str, domain: str | None = None) -> Read[PlaybookView]:
        domain = self.tenancy.read_domain(capsule_id, domain)

        def compute(reader: DomainReader) -> PlaybookView:
            bullets = reader.active_bullets()
            return PlaybookView(
                domain=domain,
                version=reader.version,
                bullets=bullets,
                total_tokens=sum(b.tokens for b in bullets),
            )

        return Read(domain, "playbook", PlaybookView, compute)

    def stats(self, capsule_id: str, domain: str | None = None) -> DomainStats:
        """The size of the capsule's (or a shared) domain's context."""
        domain = self.tenancy.read_domain(capsule_id, domain)
        return self.on_shard(domain, lambda store: store.stats(domain))

    def render(self, capsule_id: str, request: RenderRequest | None = None) -> RenderedPlaybook:
        """The playbook as prompt text within a token budget, most useful bullets first."""
        return self.run(self.plan_render(capsule_id, request or RenderRequest()))

    def plan_render(self, capsule_id: str, request: RenderRequest) -> Read[RenderedPlaybook]:
        domain = self.tenancy.read_domain(capsule_id, request.domain)
        budget = request.token_budget or self.settings.render_token_budget

        def compute(reader: DomainReader) -> RenderedPlaybook:
            query = self.query_vectors.vector(request.query) if request.query else None
            ranked = reader.ranked_bullets(query)
            prompt, tokens, kept = render_bullets(ranked, budget)
            return RenderedPlaybook(
                domain=domain,
                version=reader.version,
                prompt=prompt,
                tokens=tokens,
                token_budget=budget,
                bullets=kept,
                omitted=len(ranked) - len(kept),
            )

        key = request_key("render", {"budget": budget, "query": request.query})
        return Read(domain, key, RenderedPlaybook, compute, request.query or None)

    def search_memories(self, capsule_id: str, query: MemoryQuery) -> MemorySearchResult:
        """Top-k memories of the domain by cosine similarity, filtered by outcome and age."""
        return self.run(self.plan_search(capsule_id, query))

    def plan_search(self, capsule_id: str, query: MemoryQuery) -> Read[MemorySearchResult]:
        domain = self.tenancy.read_domain(capsule_id, query.domain)
        since = _since(query.since, query.max_age_s)

        def compute(reader: DomainReader) -> MemorySearchResult:
            hits = reader.search(
                self.query_vectors.vector(query.query),
                k=query.k,
                outcome=query.outcome,
                since=since,
                min_similarity=query.min_similarity,
            )
            return MemorySearchResult(domain=domain, version=reader.version, hits=hits)

        key = request_key(
            "search",
            {
                "q": query.query,
                "k": query.k,
                "o": query.outcome,
                "s": since,
                "m": query.min_similarity,
            },
        )
        return Read(domain, key, MemorySearchResult, compute, query.query)

    def retrieve(self, capsule_id: str, request: RetrieveRequest) -> Retrieval:
        """Ranked bullets and similar memories for one task, plus the prompt that holds them."""
        return self.run(self.plan_retrieve(capsule_id, request))

    def plan_retrieve(self, capsule_id: str, request: RetrieveRequest) -> Read[Retrieval]:
        domain = self.tenancy.read_domain(capsule_id, request.domain)
        budget = request.token_budget or self.settings.render_token_budget
        since = _since(None, request.memory_max_age_s)

        def compute(reader: DomainReader) -> Retrieval:
            query = self.query_vectors.vector(request.query)
            ranked = reader.ranked_bullets(query)
            hits = (
                reader.search(
                    query, k=request.k_memories, outcome=request.memory_outcome, since=since
                )
                if request.k_memories
                else []
            )
            prompt, tokens, kept, kept_hits = render_context(ranked, hits, budget)
            return Retrieval(
                domain=domain,
                version=reader.version,
                bullets=kept,
                memories=kept_hits,
                prompt=prompt,
                tokens=tokens,
            )

        key = request_key(
            "retrieve",
            {
                "q": request.query,
                "b": budget,
                "k": request.k_memories,
                "o": request.memory_outcome,
                "s": since,
            },
        )
        return Read(domain, key, Retrieval, compute, request.query)

    # -- writes ------------------------------------------------------------------------
    def apply_delta(self, capsule_id: str, delta: Delta) -> DeltaResult:
        domain = self.tenancy.write_domain(capsule_id)
        return self._apply(domain, delta)

    def _apply(self, domain: str, delta: Delta) -> DeltaResult:
        if len(delta.ops) > self.settings.max_ops_per_delta:
            raise InvalidInput(
                f"{len(delta.ops)} operations; at most {self.settings.max_ops_per_delta} per delta",
                field="ops",
            )
        texts = sorted(
            {
                op.content
                for op in delta.ops
                if isinstance(op, AddOp | UpdateOp) and op.content is not None
            }
        )
        vectors = dict(zip(texts, self.embed(texts), strict=True))
        result = self.on_shard(
            domain, lambda s: s.apply_delta(domain, delta, vectors, self.settings)
        )
        self.versions.publish(domain, result.version)
        self._refresh_view(domain, result.version)
        return result

    def add_memories(self, capsule_id: str, drafts: Sequence[MemoryDraft]) -> AddMemoriesResult:
        """Append memories; a near-identical item (same outcome, cosine above the threshold)
        reinforces the one already stored instead of adding a copy."""
        domain = self.tenancy.write_domain(capsule_id)
        drafts = with_capsule(drafts, capsule_id)
        pending = plan_memories(
            drafts,
            self.embed([memory_text(d) for d in drafts]),
            lambda vector, outcome: self.nearest_memory(domain, vector, outcome),
            self.settings.memory_dedup_threshold,
            [],
        )
        version, items = self.on_shard(domain, lambda s: s.add_memories(domain, pending))
        self.versions.publish(domain, version)
        self._refresh_view(domain, version)
        return AddMemoriesResult(domain=domain, version=version, items=items)

    def _refresh_view(self, domain: str, version: int) -> None:
        """The writer brings its own view up to date (the learning worker applies its rows
        itself): the write pays the read-back of its rows, not the next retrieve."""
        if not self.cache_enabled:
            return
        try:
            self.on_shard(domain, lambda store: self.views.refresh(domain, store, version))
        except Exception as exc:  # the write is committed; the next read catches up instead
            log.warning("view not refreshed after a write", domain=domain, error=str(exc))

    def nearest_memory(self, domain: str, vector: Vector, outcome: str) -> str | None:
        """The stored memory of this outcome a new one would reinforce, if any."""
        return self.memory_probe(domain)(vector, outcome)

    def memory_probe(self, domain: str) -> Callable[[Vector, str], str | None]:
        """`nearest_memory` for the vectors of a learner's batch: the domain's view and
        version are looked up once, not once a vector (a version read each, without Redis)."""
        threshold = self.settings.memory_dedup_threshold

        def kept(hit: tuple[str, float] | None) -> str | None:
            return hit[0] if hit is not None and hit[1] >= threshold else None

        if not self.cache_enabled:

            def scan(vector: Vector, outcome: str) -> str | None:
                def nearest(store: ShardStore) -> tuple[str, float] | None:
                    _, hits = store.scan_memories(domain, vector, k=1, outcome=outcome)
                    return (hits[0].memory.id, hits[0].similarity) if hits else None

                return kept(self.on_shard(domain, nearest))

            return scan
        view = self.on_shard(
            domain,
            lambda store: self.views.get(domain, lambda _d: store, self.current_version(domain)),
        )
        return lambda vector, outcome: kept(view.nearest_memory(vector, outcome))

    def learn(self, trajectory: Trajectory) -> LearnResult:
        """Reflect, curate and distil one trajectory now: tag the bullets it used, apply the
        curator's delta, and add its memory items. Replaying a trajectory changes nothing."""
        return learn(self, trajectory)

    # -- learning off the request path -------------------------------------------------
    def submit(self, trajectory: Trajectory) -> LearnTicket:
        """Queue a trajectory for learning and return once it is committed to its domain's
        shard (the acknowledgement). The learning worker learns from it, in queue order per
        domain, exactly once; submitting the same trajectory id again adds nothing. A memory
        keyed by the query (`memory_key`) is queued with the prompt's vector when this
        service embedded it for a retrieval (the loop's request did): nothing to embed."""
        domain = self.tenancy.write_domain(trajectory.capsule_id, trajectory.domain)
        by_query = trajectory.memory_key == "query"
        key = self.query_vectors.known(trajectory.prompt) if by_query else None
        ticket = self.on_shard(domain, lambda store: store.queue.enqueue(domain, trajectory, key))
        self.learner.notify(self.router.url_for(domain))
        return ticket

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued trajectory this process can see was learned from (True),
        or `timeout` seconds passed (False). Starts the worker, which recovers what a dead
        process left queued."""
        return self.learner.drain(timeout)

    def start_learning(self) -> None:
        """Start the learning worker now (it also starts on the first submit or drain)."""
        self.learner.start()

    def close(self) -> None:
        """Stop the learning worker (rows still queued stay queued for the next process) and
        the version feed."""
        self.learner.stop()
        self.versions.close()

    def learn_queue(self, capsule_id: str) -> list[QueueRow]:
        """The queue rows of the capsule's domain, oldest first."""
        domain = self.tenancy.write_domain(capsule_id)
        return self.on_shard(domain, lambda store: store.queue.rows(domain))

    def cache_stats(self) -> dict[str, int]:
        return (
            self.results.stats()
            | self.views.stats()
            | self.versions.stats()
            | self.hot_reads.stats()
        )

    def learning_stats(self) -> dict[str, int]:
        """The worker's counters and the query-embedding cache's."""
        queries = {f"query_{k}": v for k, v in self.query_vectors.stats().items()}
        return self.learner.stats() | queries


def _since(since: float | None, max_age_s: float | None) -> float | None:
    """An absolute lower bound on creation time; relative ages are floored to whole seconds
    so that requests within one second share a cache entry."""
    if max_age_s is None:
        return since
    bound = float(math.floor(time.time() - max_age_s))
    return bound if since is None else max(since, bound)
