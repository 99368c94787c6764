"""Context service benchmark: memory search and delta apply over loopback HTTP, on SQLite and
Postgres, with the cache on and off, on its own and in the loop's read/write mix, against a
usearch HNSW index of the same embeddings.

    .venv/bin/python benchmarks/context_service.py [--items 10000] [--clients 2] [--quick]

One domain holds `--items` ReasoningBank memories (distilled from trajectories of the task
family, embedded with all-MiniLM-L6-v2) and 40 playbook bullets. For each back end a
`uvicorn` process serves `trifecta.context.service` on loopback, once with the cache (views,
result cache, Redis) and once without (every request reads the shard and scans). `--clients`
client processes send requests in a closed loop (the next when the last returns):

- search: 200 distinct task prompts, each asked many times (top-5 memories). With the cache,
  the first request of each prompt is reported separately (it embeds the query and scans).
- delta apply: one TAG operation per request, each a new op id (every request writes).
- the loop's workload: what `trifecta run` sends the context layer per served request
  (`orchestrator/loop.py`: one `retrieve` before serving, one `learn` after, so reads and
  writes 1:1), each client alternating a retrieve of a task prompt with the trajectory of
  that task; every learn writes memories and bullet tags and moves the domain's version.
- baseline: a real vector index, a usearch HNSW graph (the library
  `trifecta.context.vector_index` uses) over the same 10,000 embeddings, in this process:
  embed the query and search the graph (and, in the loop workload, embed and add a memory
  per write). The exact top-5 of the stored vectors is the ground truth for recall.

Goals: cached search p99 under 5 ms and at least 10x the uncached throughput, and at least
the throughput of the usearch baseline, 10,000 items (95% bootstrap intervals).
Requires Postgres and Redis (`make bench` starts them; `scripts/services.sh env` names them).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from benchmarks._context_load import (
    Run,
    Server,
    closed_loop,
    fresh_postgres,
    http_clients,
    recall,
)
from benchmarks._report import (
    Goal,
    bootstrap_ratio,
    bootstrap_statistic,
    cpu_name,
    goals_markdown,
    machine_load,
    p99,
    write_results,
    write_section,
)
from trifecta.context import tables
from trifecta.context.deltas import AddOp, Delta
from trifecta.context.facade import ContextService
from trifecta.context.memory import memory_id_for, memory_text, structured_draft
from trifecta.context.models import MemoryDraft
from trifecta.context.settings import ContextSettings
from trifecta.context.store import PendingMemory, ShardStore
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.context.vector_index import EXPANSION_ADD, EXPANSION_SEARCH
from trifecta.core.db import get_engine, transaction
from trifecta.core.embeddings import get_embedder
from trifecta.core.settings import get_settings
from trifecta.core.tasks import generate_tasks
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.keys import KeyStore
from trifecta.fleet.registry import CapsuleRegistry

console = Console()
HEADING = "## Context service: search and delta apply over HTTP"
METHOD = (
    "One domain of {items} ReasoningBank memories (distilled from task-family trajectories, "
    "embedded with all-MiniLM-L6-v2) and 40 bullets. The service runs in its own `uvicorn` "
    "process on loopback; {clients} client processes send requests in a closed loop. Search "
    "asks 200 distinct task prompts many times (top-5). *Cache off*: every request embeds the "
    "query and scans every embedding of the domain read from the shard. *Cache on*: the per-domain "
    "in-process view, whose standing top-k searches writes update in place, plus the result "
    "cache keyed by (domain, version, request), shared through Redis (a hit is answered with "
    "the stored JSON); its first request of each prompt is listed separately. Delta apply: one TAG per "
    "request, each with a new op id, so every request writes. *Loop*: the workload "
    "`trifecta run` produces (`orchestrator/loop.py`: per served request the playbook read "
    "(its first hop), one retrieve before serving and one learn queued after "
    "(`/trajectories/queue`, as the loop submits it: the answer is the commit of the queue "
    "row, and the service's learning worker learns from it: a process of its own when "
    "`learning_process` is on, a thread otherwise), the trajectory's memory keyed by the "
    "prompt's embedding as the loop's are (`memory_key` query: the queue row carries the "
    "retrieve's vector, so the learner embeds no memory text), retrieves and learns 1:1, "
    "each client sending the three in turn; "
    "every batch learned adds memories and moves the domain's version, so the result cache "
    "must not serve a stale answer: the retrieve after it is rendered from the view's standing "
    "search (updated by the write, not searched again) and the remembered query embedding. "
    "Baseline: a usearch HNSW index (the library the context "
    "layer's `vector_index` uses; expansion {expansion}) over the same embeddings, in the "
    "benchmark process with no HTTP hop: embed the query, search the graph; in the loop "
    "workload each write embeds a memory text and adds it. recall@5 is against the exact "
    "top-5 of the stored vectors."
)
CONTENTION = (
    "Server, clients and databases share the machine's 2 cores, and other engineers' "
    "training jobs ran beside them ({load} at the end): every p99 carries that load."
)
DOMAIN, CAPSULE = "bench", "bench-twin"
REPEATED = 8  # prompts of the repeated-prompt loop: a capsule's standing queries
# (back end, workload, mode) -> seconds from a loop pass's end until its queue was empty
DRAINS: dict[tuple[str, str, str], float] = {}
LOOP_REPEATED = f"loop, {REPEATED} prompts repeated"
# (back end, workload) -> the server's result-cache hits, misses and hot reads refreshed
# by its learning worker over a cache-on loop pass (from /health, before and after)
CACHE_COUNTS: dict[tuple[str, str], tuple[int, int, int]] = {}
COUNTED = ("hits", "misses", "hot_refreshed")
PATHS = [
    [("edge", "node-1")],
    [("cognitive", "small")],
    [("cognitive", "small"), ("cognitive", "large")],
    [("edge", "node-2"), ("cognitive", "large")],
    [("generative", "moe")],
]


def memory_drafts(count: int) -> list[MemoryDraft]:
    """Memory items as `learn` distils them without a model, from trajectories of the family."""
    rng = random.Random(11)
    drafts = []
    for i, task in enumerate(generate_tasks(count, seed=5, domain=DOMAIN)):
        ok = rng.random() < 0.7
        wrong = str(int(task.answer) + rng.choice([-10, -1, 1, 10]))
        steps = [
            TrajectoryStep(layer=layer, tier=tier, mean_entropy=round(rng.uniform(0.05, 2.0), 3))
            for layer, tier in rng.choice(PATHS)
        ]
        drafts.append(
            structured_draft(
                Trajectory(
                    id=f"traj-{i:06d}",
                    capsule_id=CAPSULE,
                    task_id=task.id,
                    task_kind=task.kind,
                    prompt=task.prompt,
                    answer=task.answer if ok else wrong,
                    outcome="success" if ok else "failure",
                    judge="verifier",
                    steps=steps,
                    verdict_detail=None if ok else f"expected {task.answer}",
                )
            )
        )
    return drafts


def seed(url: str, drafts: list[MemoryDraft], vectors: np.ndarray) -> list[str]:
    """Capsule, memories (stored directly with their embeddings) and 40 bullets; returns the
    bullet ids."""
    registry = CapsuleRegistry(get_engine(url))
    registry.add(
        Capsule(id=CAPSULE, name="bench", kind="digital_twin", domain=DOMAIN), replace=True
    )
    store = ShardStore(url)
    for start in range(0, len(drafts), 1000):
        store.add_memories(
            DOMAIN,
            [
                PendingMemory(memory_id_for(d, 0), d, vectors[start + j])
                for j, d in enumerate(drafts[start : start + 1000])
            ],
        )
    service = ContextService(control_url=url, embedder=get_embedder(), redis_url="")
    sections = ["strategies", "pitfalls", "routing", "checks"]
    result = service.apply_delta(
        CAPSULE,
        Delta(
            ops=[
                AddOp(
                    op_id=f"b{i}",
                    section=sections[i % 4],
                    content=f"Rule {i}: for grade {1 + i % 5} prompts check operand {i} first.",
                )
                for i in range(40)
            ]
        ),
    )
    return [b.id for b in result.bullets]


def embeddings(texts: list[str], queries: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM embeddings of the memories and queries, kept in the data directory between runs
    (embedding 10,000 texts takes minutes on two busy cores)."""
    digest = hashlib.blake2b("\x00".join(texts + queries).encode(), digest_size=8).hexdigest()
    path = get_settings().artifacts_dir("benchmarks") / f"context_service-{digest}.npy"
    if path.exists():
        matrix = np.load(path)
    else:
        with console.status(f"embedding {len(texts)} memories with all-MiniLM-L6-v2"):
            matrix = get_embedder().embed(texts + queries)
        np.save(path, matrix)
    return matrix[: len(texts)], matrix[len(texts) :]


def domain_matrix(store: ShardStore) -> tuple[list[str], np.ndarray]:
    """Every memory id and embedding of the domain, read from the database."""
    m = tables.memories.c
    with transaction(store.engine) as session:
        rows = session.execute(select(m.id, m.embedding).where(m.domain == DOMAIN)).all()
    matrix = np.frombuffer(b"".join(r.embedding for r in rows), dtype=np.float32)
    return [r.id for r in rows], matrix.reshape(len(rows), -1)


class UsearchBaseline:
    """The skeptic's alternative to the service: embed, then search a usearch HNSW graph
    held in this process (no HTTP, no database on the read path)."""

    def __init__(self, vectors: np.ndarray, ids: list[str]):
        from usearch.index import Index

        self.index = Index(
            ndim=vectors.shape[1],
            metric="ip",
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )
        self.ids = list(ids)
        self.index.add(np.arange(len(ids), dtype=np.uint64), vectors.astype(np.float32))
        self.embedder = get_embedder()
        self.lock = threading.Lock()  # one writer at a time; embedding runs outside it

    def search(self, query: str, k: int = 5) -> list[str]:
        vector = np.asarray(self.embedder.embed([query])[0], np.float32)
        with self.lock:
            keys = self.index.search(vector, k).keys
            return [self.ids[int(key)] for key in keys]

    def add(self, text: str) -> None:
        vector = np.asarray(self.embedder.embed([text])[0], np.float32)
        with self.lock:
            self.index.add(len(self.ids), vector)
            self.ids.append(f"new-{len(self.ids)}")


def usearch_search(
    baseline: UsearchBaseline, queries: list[str], clients: int, per_client: int
) -> tuple[Run, dict[str, list[str]]]:
    found: dict[str, list[str]] = {}

    def answer(_client: int, i: int) -> None:
        query = queries[i % len(queries)]
        found[query] = baseline.search(query)

    return closed_loop("usearch HNSW in process (baseline)", clients, per_client, answer), found


def usearch_loop(baseline: UsearchBaseline, prompts: list[str], clients: int, pairs: int) -> Run:
    """The loop's 1:1 reads and writes against the in-process index."""
    kinds: list[str] = []

    def step(_client: int, i: int) -> None:
        prompt = prompts[(i // 2) % len(prompts)]
        if i % 2 == 0:
            baseline.search(prompt, 3)
        else:
            baseline.add(f"{prompt} -> learned")

    run = closed_loop("usearch HNSW in process (baseline)", clients, 2 * pairs, step)
    kinds = ["read" if i % 2 == 0 else "write" for i in range(2 * pairs)] * clients
    run.kinds = kinds
    return run


def exact_top(
    url: str, queries: list[str], vectors: np.ndarray, k: int = 5
) -> dict[str, list[str]]:
    ids, matrix = domain_matrix(ShardStore(url))
    return {
        q: [ids[j] for j in np.argsort(-(matrix @ v))[:k]]
        for q, v in zip(queries, vectors, strict=True)
    }


def search_requests(
    queries: list[str], clients: int, per_client: int, seed: int
) -> list[list[Any]]:
    order = list(range(len(queries)))
    random.Random(seed).shuffle(order)
    path = f"/capsules/{CAPSULE}/memories/search"
    return [
        [
            (path, {"query": queries[order[(c * per_client + i) % len(order)]], "k": 5})
            for i in range(per_client)
        ]
        for c in range(clients)
    ]


def delta_requests(bullets: list[str], clients: int, per_client: int, tag: str) -> list[list[Any]]:
    path = f"/capsules/{CAPSULE}/deltas"
    return [
        [
            (
                path,
                {
                    "ops": [
                        {
                            "op": "TAG",
                            "op_id": f"{tag}-{c}-{i}",
                            "bullet_id": bullets[i % len(bullets)],
                            "tag": "helpful" if i % 4 else "harmful",
                        }
                    ]
                },
            )
            for i in range(per_client)
        ]
        for c in range(clients)
    ]


def loop_requests(
    tasks: list[Any],
    clients: int,
    pairs: int,
    tag: str,
    prompts: int | None = None,
    *,
    as_loop: bool = True,
) -> list[list[Any]]:
    """Per client, `pairs` times what the loop sends the context layer per request it
    serves with context (`orchestrator/loop.py`): the playbook read (its first hop), the
    retrieve (k=3), then the trajectory to learn from, queued, its memory keyed by the
    prompt's embedding as `trace.trajectory_of` makes it (the retrieve embedded the prompt,
    so the queue row carries that vector and the learner embeds no memory text).
    `as_loop=False`: the workload before issue 15's last check (no playbook read, memories
    keyed by their text, which the learner embeds). With `prompts`, the tasks cycle through
    that many prompts (a capsule's standing queries repeat), so a retrieve after a write is
    answered from its kept search."""
    rng = random.Random(tag)
    pool = tasks[:prompts] if prompts else tasks
    out = []
    for c in range(clients):
        requests: list[Any] = []
        for i in range(pairs):
            task = pool[(c * pairs + i) % len(pool)]
            ok = rng.random() < 0.7
            if as_loop:
                requests.append((f"/capsules/{CAPSULE}/playbook", None))
            requests.append(
                (f"/capsules/{CAPSULE}/retrieve", {"query": task.prompt, "k_memories": 3})
            )
            trajectory = Trajectory(
                id=f"{tag}-{c}-{i}",
                capsule_id=CAPSULE,
                domain=DOMAIN,
                task_id=task.id,
                task_kind=task.kind,
                prompt=task.prompt,
                answer=task.answer if ok else "0",
                outcome="success" if ok else "failure",
                judge="verifier",
                verdict_detail=None if ok else f"expected {task.answer}",
                steps=[TrajectoryStep(layer="cognitive", tier="small", mean_entropy=0.4)],
                memory_key="query" if as_loop else "text",
            )
            # Queued, as the loop submits it: the service's learning worker learns from it.
            requests.append(("/trajectories/queue", trajectory.model_dump(mode="json")))
        out.append(requests)
    return out


def drain_seconds(url: str, timeout_s: float = 600.0) -> float:
    """How long after a pass the server's learner took to empty the learn queue (the
    learning the pass queued is not free: it is reported beside the pass)."""
    queue = ShardStore(url).queue
    began = time.perf_counter()
    while queue.pending_count() and time.perf_counter() - began < timeout_s:
        time.sleep(0.05)
    return time.perf_counter() - began


@dataclass
class Plan:
    items: int
    clients: int
    cached: int  # search requests per client, cache on (after each query's first sight)
    uncached: int  # search requests per client, cache off
    deltas: int  # delta requests per client
    pairs: int  # loop workload: (retrieve, learn) pairs per client
    quick: bool = False


def run_backend(
    backend: str,
    url: str,
    redis_url: str,
    plan: Plan,
    drafts: list[MemoryDraft],
    vectors: np.ndarray,
    tasks: list[Any],
    query_vectors: np.ndarray,
    data_dir: Path,
) -> list[tuple[str, Run, float | None]]:
    import redis

    queries = [t.prompt for t in tasks]
    console.print(f"[bold]{backend}[/]: seeding {plan.items} memories")
    bullets = seed(url, drafts, vectors)
    token = KeyStore(get_engine(url)).create(capsule_id=CAPSULE, label="benchmark").token
    truth = exact_top(url, queries, query_vectors)
    ids, matrix = domain_matrix(ShardStore(url))
    rows: list[tuple[str, Run, float | None]] = []
    baseline = UsearchBaseline(matrix, ids)
    run, found = usearch_search(baseline, queries, plan.clients, plan.cached // 4)
    rows.append(("search", run, recall(found, truth)))
    rows.append(("loop", usearch_loop(baseline, queries, plan.clients, plan.pairs), None))
    repeated = usearch_loop(baseline, queries[:REPEATED], plan.clients, plan.pairs)
    rows.append((LOOP_REPEATED, repeated, None))
    for cache in (False, True):
        redis.Redis.from_url(redis_url).flushdb()
        server = Server(url, redis_url, cache, data_dir)
        try:
            c = plan.clients
            if cache:
                # Against the stored vectors now: the cache-off loop passes learned memories
                # keyed by these very prompts (the loop's memory_key), which rank first.
                truth = exact_top(url, queries, query_vectors)
                first, found = http_clients(
                    "cache on, first request of a query",
                    server.url,
                    search_requests(queries, c, len(queries) // c, 1),
                    token,
                )
                rows.append(("search", first, recall(found, truth)))
                run, found = http_clients(
                    "cache on", server.url, search_requests(queries, c, plan.cached, 2), token
                )
            else:
                run, found = http_clients(
                    "cache off", server.url, search_requests(queries, c, plan.uncached, 3), token
                )
            rows.append(("search", run, recall(found, truth)))
            deltas, _ = http_clients(
                "cache on" if cache else "cache off",
                server.url,
                delta_requests(bullets, c, plan.deltas, f"{backend}-{cache}"),
                token,
            )
            rows.append(("delta apply", deltas, None))
            before = cache_counts(server.url)
            loop, _ = http_clients(
                "cache on" if cache else "cache off",
                server.url,
                loop_requests(tasks, c, plan.pairs, f"loop-{backend}-{cache}"),
                token,
            )
            rows.append(("loop", loop, None))
            DRAINS[(backend, "loop", loop.name)] = drain_seconds(url)
            after = cache_counts(server.url)
            if cache:
                CACHE_COUNTS[(backend, "loop")] = counts_between(before, after)
            repeated, _ = http_clients(
                "cache on" if cache else "cache off",
                server.url,
                loop_requests(tasks, c, plan.pairs, f"loop-r-{backend}-{cache}", REPEATED),
                token,
            )
            rows.append((LOOP_REPEATED, repeated, None))
            DRAINS[(backend, LOOP_REPEATED, repeated.name)] = drain_seconds(url)
            if cache:
                CACHE_COUNTS[(backend, LOOP_REPEATED)] = counts_between(
                    after, cache_counts(server.url)
                )
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    args = parser.parse_args()
    import torch

    # This process's embedder (the usearch baseline's queries and writes) on one thread: the
    # server and the client processes share the 2 cores with it (the server keeps its own).
    torch.set_num_threads(1)
    postgres, redis_base = (
        os.environ.get("TRIFECTA_TEST_POSTGRES_URL"),
        os.environ.get("TRIFECTA_TEST_REDIS_URL"),
    )
    if not postgres or not redis_base:
        sys.exit("needs TRIFECTA_TEST_POSTGRES_URL and TRIFECTA_TEST_REDIS_URL (run `make bench`)")
    plan = Plan(
        args.items,
        args.clients,
        *((150, 10, 40, 10) if args.quick else (1500, 40, 150, 100)),
        quick=args.quick,
    )
    redis_url = redis_base.rsplit("/", 1)[0] + "/13"

    drafts = memory_drafts(plan.items)
    tasks = generate_tasks(200, seed=9, split="heldout", domain=DOMAIN)
    vectors, query_vectors = embeddings([memory_text(d) for d in drafts], [t.prompt for t in tasks])

    results: dict[str, list[tuple[str, Run, float | None]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        results["SQLite"] = run_backend(
            "SQLite",
            f"sqlite:///{data_dir / 'bench.db'}",
            redis_url,
            plan,
            drafts,
            vectors,
            tasks,
            query_vectors,
            data_dir,
        )
        pg_url, drop = fresh_postgres(postgres)
        try:
            results["Postgres"] = run_backend(
                "Postgres",
                pg_url,
                redis_url,
                plan,
                drafts,
                vectors,
                tasks,
                query_vectors,
                data_dir,
            )
        finally:
            drop()
    report(results, plan)


def _rows_of(op: str, run: Run) -> list[tuple[str, Run]]:
    """The loop workload is reported as its reads and its writes."""
    if op in ("loop", LOOP_REPEATED):
        rows = [(f"{op}: retrieve", run.of("read")), (f"{op}: learn", run.of("write"))]
        if "playbook" in (run.kinds or []):  # the loop's first hop (not the baseline's)
            rows.insert(0, (f"{op}: playbook", run.of("playbook")))
        return rows
    return [(op, run)]


def goals(results: dict[str, list[tuple[str, Run, float | None]]]) -> list[Goal]:
    out = []
    for backend, rows in results.items():
        search = {run.name: run for op, run, _ in rows if op == "search"}
        loop = {run.name: run for op, run, _ in rows if op == "loop"}
        repeated = {run.name: run for op, run, _ in rows if op == LOOP_REPEATED}
        cached, uncached = search["cache on"], search["cache off"]
        vector_index = search["usearch HNSW in process (baseline)"]
        tail = bootstrap_statistic(cached.latencies_ms, p99)
        # closed loop, same clients: throughput ratio = ratio of mean latencies
        speedup = bootstrap_ratio(uncached.latencies_ms, cached.latencies_ms, statistic=np.mean)
        vs_index = bootstrap_ratio(
            vector_index.latencies_ms, cached.latencies_ms, statistic=np.mean
        )
        loop_tail = bootstrap_statistic(loop["cache on"].of("read").latencies_ms, p99)
        repeated_tail = bootstrap_statistic(repeated["cache on"].of("read").latencies_ms, p99)
        out += [
            Goal.of(f"{backend}: cached search p99", tail, at_most=5, unit=" ms"),
            Goal.of(
                f"{backend}: cached / uncached search throughput", speedup, at_least=10, unit="x"
            ),
            Goal.of(
                f"{backend}: cached search / usearch HNSW baseline throughput",
                vs_index,
                at_least=1,
                unit="x",
            ),
            Goal.of(
                f"{backend}: loop workload (1 queued learn per retrieve), cached retrieve p99",
                loop_tail,
                at_most=5,
                unit=" ms",
            ),
            Goal.of(
                f"{backend}: loop workload, {REPEATED} prompts repeated, cached retrieve p99",
                repeated_tail,
                at_most=5,
                unit=" ms",
            ),
        ]
    return out


def learner_setup() -> str:
    """Where and at what priority the server learned: the defaults, or the TRIFECTA_CONTEXT_
    variables the caller set (`Server` passes them on)."""
    fields = ContextSettings.model_fields
    process = os.environ.get(
        "TRIFECTA_CONTEXT_LEARNING_PROCESS", str(fields["learning_process"].default)
    ).lower() in ("1", "true", "yes", "on")
    nice = os.environ.get("TRIFECTA_CONTEXT_LEARN_NICE", str(fields["learn_nice"].default))
    where = "a process of its own" if process else "a thread of the server process"
    return f"{where}, at nice {nice}"


def cache_counts(url: str) -> dict[str, int]:
    """The server's cache counters (`/health`, no key needed)."""
    stats: dict[str, int] = httpx.get(url + "/health", timeout=30).json()["cache_stats"]
    return stats


def counts_between(before: dict[str, int], after: dict[str, int]) -> tuple[int, int, int]:
    hits, misses, refreshed = (after.get(k, 0) - before.get(k, 0) for k in COUNTED)
    return hits, misses, refreshed


def hot_note() -> str:
    """How the cache-on loop passes' reads were answered: result-cache hits and misses, and
    the hot reads the learning worker computed before publishing its batches."""
    parts = [
        f"{b} {w}: {h} hits, {m} misses, {r} refreshed"
        for (b, w), (h, m, r) in CACHE_COUNTS.items()
    ]
    return (
        "The server's result-cache lookups over each cache-on loop pass (`/health`; a read "
        "that misses looks twice, on the event loop (in the process only) and again in the "
        "thread pool (in Redis too when computing it here would embed its query or read the "
        "shard), then is computed from the view and shared with Redis by the sharer thread; "
        "*refreshed*: hot reads the learning worker computed at a "
        "batch's version before publishing it, `context/hot_reads.py`): " + "; ".join(parts) + "."
    )


def drain_note() -> str:
    """The time each loop pass's queued learning took to finish after the pass."""
    parts = [f"{b} {w} ({m}) {sec:.1f} s" for (b, w, m), sec in DRAINS.items()]
    return (
        f"The learning the loop passes queued, learned by the server's learning worker "
        f"({learner_setup()}): the queue was empty this long after each pass ended: "
        + "; ".join(parts)
        + "."
    )


def report(results: dict[str, list[tuple[str, Run, float | None]]], plan: Plan) -> None:
    table = Table(title=f"context service, {plan.items} memories, {plan.clients} clients")
    for column in ("back end", "operation", "mode", "req/s", "p50 ms", "p99 ms", "recall@5"):
        table.add_column(column, justify="right")
    lines = [
        "| back end | operation | mode | requests/s | p50 ms | p99 ms | recall@5 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for backend, rows in results.items():
        for op, whole, rec in rows:
            for label, run in _rows_of(op, whole):
                cells = [
                    backend,
                    label,
                    run.name,
                    f"{run.throughput:.1f}",
                    f"{run.pct(50):.2f}",
                    f"{run.pct(99):.2f}",
                    "" if rec is None else f"{rec:.3f}",
                ]
                table.add_row(*cells)
                lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    goal_list = goals(results)
    for g in goal_list:
        console.print(f"{g.claim}: {g.figure:.2f}{g.unit} {g.interval()} -> {g.verdict()}")
    command = (
        f".venv/bin/python benchmarks/context_service.py --items {plan.items} "
        f"--clients {plan.clients}" + (" --quick" if plan.quick else "")
    )
    method = METHOD.format(items=plan.items, clients=plan.clients, expansion=EXPANSION_SEARCH)
    body = [
        HEADING,
        "",
        f"`{command}` (`make bench` runs it with Postgres and Redis started). CPU: {cpu_name()}.",
        "",
        method,
        "",
        *lines,
        "",
        "Loop rows: requests/s is of that kind alone over the whole run (reads and writes "
        "alternate, so the two add up to the workload's rate).",
        "",
        drain_note(),
        "",
        hot_note(),
        "",
        *goals_markdown(goal_list),
        "",
        "The usearch baseline embeds every query (on one torch thread), "
        "as the service does on a miss (compare it "
        "with *cache on, first request of a query*); the cached service answers a repeated "
        "query from its result cache without embedding, which is most of its lead. "
        "In the loop workload every batch the learner commits moves the domain's version, so "
        "the retrieve after it misses the result cache. Each retrieve here asks a prompt the loop has "
        "not retrieved before with these arguments (200 prompts, 100 pairs per client; "
        "the search rows asked them with k=5, the loop asks 3), so no standing search can "
        "answer it: it is computed from the view, with the query embedding remembered "
        "from the search rows, one scan of the 10,000 embeddings, and no read of the "
        "shard (the writer brought the view up to date). A repeated retrieve is answered "
        "from its standing search, which writes update in place (`context/standing.py`; "
        f"tested equal to the uncached scan): the *loop, {REPEATED} prompts repeated* rows "
        f"are the same workload with each client cycling through {REPEATED} prompts, as a "
        "capsule's standing queries repeat, so after a prompt's first retrieve it is "
        "answered from its kept search unless a write rewrote (reinforced) a memory in its "
        "top-k, which drops it; and once it is hot (asked twice, and again since the "
        "domain's last batch) the learning worker computes it at each batch's version "
        "before publishing the batch, so its next ask is a result-cache hit "
        "(`context/hot_reads.py`; issue 15). The loop's learns are queued, as `trifecta run` submits "
        f"them, and learned by the server's learning worker (this run: {learner_setup()}; "
        "`TRIFECTA_CONTEXT_LEARNING_PROCESS` and `TRIFECTA_CONTEXT_LEARN_NICE` choose). "
        "Until issue 15 this script dropped every `TRIFECTA_` variable before starting the "
        "server, so an earlier run 'with the learner in its own process' (p99 44.2 / 67.4 "
        "ms) had learned in a thread like the committed one and said nothing about the "
        "interpreter lock; `docs/context.md` (*Learner priority and placement*) has the "
        "alternated runs since, which differ by workload and by run more than the "
        "placements can be ranked at the load they ran at. Until the "
        "learn queue the workload posted `/trajectories`, learned synchronously inside the "
        "server process beside the retrieves (retrieve p99 25.9 ms SQLite, 13.7 ms "
        "Postgres, at load average about 2). The loop retrieve's p50 against the cached "
        "search's is the learner's batches moving the version (the retrieve after one "
        "misses the result cache) and the learner's CPU on the same two cores.",
        "",
        "The view's scan and the standing searches' screen multiply with numpy's einsum: "
        "with BLAS, OpenBLAS's worker threads had made one 10,000 x 384 scan take 54 ms "
        "at the median on this loaded machine (1.0 ms with einsum). In the run before "
        "that change the loop retrieve's p50 was 71 / 48 ms (p99 152 / 115 ms), but at "
        "load average 14.6 (this run's is below), so the two runs differ in load too. The "
        "uncached path (`store.scan_memories`) still multiplies with BLAS, so the *cache "
        "off* rows, and the cached / uncached ratios, carry that cost too.",
        "",
        "Cached search with no writes: sampled with py-spy before the version feed (1,000 "
        "items, load average 15), a hit's time on the server's event loop was a third the "
        "synchronous Redis GET of the domain's version, an eighth the per-request log "
        "line, the rest Starlette and FastAPI. The GET is gone: the server now reads the "
        "version from a local board that a Redis pub/sub subscription keeps, trusted only "
        "while that subscription answers its PINGs (`context/version_feed.py`; a test "
        "counts no Redis call on a hit). The log line (structlog, cached logger, JSON to "
        "stderr) measured 53 us a line at load average 4, about 1% of the 5 ms goal, so "
        "it was left as it is. The p99 above is the load's.",
        "",
        "Where the tail comes from (issue 17), measured on a server instrumented with "
        "`gc.callbacks`, a 1 ms event-loop lag probe that records the loop thread's and "
        "the process's CPU time across each stall, and per-request server time, seeded "
        "as here (SQLite, 2 clients, load average 12-37 on the 2 cores): the collector "
        "is not it (start-up heap frozen; no generation-2 collection in any phase; "
        "while hits were served 2-5 young collections of 0.1-1.3 ms in 1,200-3,000 "
        "requests). "
        "In the cached search, stalls of the loop over 3 ms added up to 3.3-4.7 s of a "
        "5-6 s phase while the whole process ran 0.3-0.6 s of CPU: it was waiting for a "
        "core, not computing and not waiting for its own threads (a hit costs the loop "
        "0.5 ms of CPU at the median). In the loop workload the process ran 1.4-3.3 s of "
        "CPU inside 3-10 s of stalls, the loop thread a tenth of it: the learn beside "
        "the retrieve held the cores (torch ran on two OpenMP threads in the server) and "
        "the GIL (switched every 5 ms by default). Running the server's torch on one "
        "thread with a 1 ms GIL switch interval showed no gain (back-to-back runs with "
        "and without, at load average 2 as at 13-37, differ less than runs of one "
        "setting do; `docs/context.md` has the figures), so it was not kept.",
        "",
        "The computed retrieve (issue 15): py-spy on the server through a cache-on loop "
        "pass (SQLite, 2,000 memories, 2 clients x 60 pairs, load average 11-14), the "
        "request threads' samples without wait leaves: 40% tokenizing the rendered prompt "
        "whole, three times a retrieve (the playbook part, the memories part, the joined "
        "prompt; about 1 ms of CPU for 1,800 tokens), 33% in the Redis SET that shares the "
        "result (its send, then the wait for the interpreter lock and a core), the view's "
        "search 7%, the learn queue's insert 5%. A prompt's count is now the sum of its "
        "lines' remembered counts (MiniLM's WordPiece pre-tokenizer cuts at whitespace, so "
        "no token spans a line break; `tests/context/test_render_token_counts.py` checks "
        "it against the whole prompt's): a computed retrieve's CPU in process went from "
        "2.70 to 0.21 ms (median of 6 alternated passes of 200 retrieves, 2,000 memories, "
        "40 bullets, prompts of about 750 tokens, load average 22-25). A miss the event loop "
        "looked up in Redis is not looked up there again at that version (one GET and one "
        "SET per computed read, not two GETs), and the thread learner's own MiniLM loads "
        "at start-up: it loaded at the worker's first batch, in the first loop pass, "
        "seconds of CPU beside that pass's retrieves.",
        "",
        "What the loop retrieve's tail waited for (issue 15), on a server instrumented per "
        "computed retrieve (its thread's CPU and run-queue time from the kernel's "
        "schedstat, its time in Redis calls and in the view's locks), a 1 ms sleep probe, "
        "and the learner's batches timed, through the cache-on loop passes (SQLite, "
        "10,000 memories, 2 clients x 100 pairs, one server a run, load average 4-24 from "
        "others' jobs): the slowest retrieves spent 30-260 ms inside Redis calls while "
        "using under 1 ms of CPU: the SET that shared the computed result, and on the "
        "event loop the GET of a result that had just missed in the process (one stalled "
        "every request behind it for 98-250 ms). Redis itself waited for a core: its "
        "process's schedstat gave 0.3-4 ms of run-queue wait a wake-up at that load; then "
        "the reader waited for the interpreter lock. Now the event loop looks in the "
        "process only, a computed result goes to Redis from a sharer thread (pipelined, "
        "at most 1,024 waiting; `tests/context/test_result_sharer.py`), and the thread "
        "pool looks in Redis only when computing the read here would cost more than the "
        "round trip (its query's embedding not remembered, or the view behind the "
        "version). Four alternated pairs of servers, the code before (b275528) and after "
        "(7ea4bd5), same workload, load average 8-24: Redis time inside computed "
        "retrieves 0.4-2.7 s a pass before, under 2 ms after; novel-prompt retrieve p99 "
        "over the four runs 289 ms [205, 338] before, 74 [46, 99] after (0.26x [0.15, "
        "0.45]; per run 37 / 174 / 439 / 75 before, 42 / 225 / 24 / 51 after: the load "
        "decides most of a run's p99), mean 0.45x [0.38, 0.53]; 8 prompts repeated p99 "
        "0.57x [0.39, 1.25] (a tie), mean 0.73x [0.58, 0.90]; server CPU over the passes "
        "a tie (7.7 / 8.2 s, medians). What remains is waiting for a core: a computed "
        "retrieve's thread waited 0.4-1.1 s in the run queue over a pass (2-3 ms of CPU "
        "a retrieve), and for the view's lock beside the learner's batches (70-80 ms "
        "over a pass). An in-process retrieve hit (`trifecta run`'s path, no Redis) costs "
        "the same before and after (35 us of CPU, 3 alternated pairs). Single runs at "
        "load 9-15 of a 1 ms switch interval (349, 116 ms) and of the learner at nice 0 "
        "(117 ms) against the default (198, 86 ms) rank nothing at that load, so neither "
        "was changed.",
        "",
        "Did 7ea4bd5 make a cached search slower (its run read Postgres p99 49.8 ms, 2.78 "
        "before)? Alternated pairs of servers, the code before it (b275528) and HEAD, each "
        "on its own database seeded as here (10,000 memories), 200 first requests then 800 "
        "hits a client, 2 clients, 4 pairs a back end: Postgres p99 9.77 ms before, 9.57 "
        "after, 0.98x [0.89, 1.15] (load 2.4-5.5); SQLite 19.1 before, 14.3 after, 0.75x "
        "[0.60, 0.92] (load 6.5-7.9). Not slower: the 49.8 ms was the load. A hit takes the "
        "same path (the process's result cache, on the event loop) before and after it.",
        "",
        "A search no longer waits for a write's apply (issue 15): the learner's batch is "
        "built beside the searches (new memory rows, a fork of the index sharing its "
        "matrix, the standing searches' new top-k lists) and swapped in under the view's "
        "lock at once, so a search sees the view before or after a write, never part of "
        "one (`tests/context/test_view_copy_on_write.py`, hypothesis with threads switching "
        "every 10 us). Measured in process: a 10,000-memory view with 200 standing "
        "searches, a writer thread at nice 10 applying 32-memory batches every 20 ms "
        "beside 1,500 novel searches, two spinning processes as load, 4 alternated pairs "
        "against the code before (load 2.0-5.0): search mean 0.63x [0.51, 0.78] (3.48 -> "
        "2.18 ms), p99 0.83x [0.62, 1.05] (a tie). The cost: the writer's CPU per batch "
        "went from 0.21 to 1.11 ms (the fork copies the view's 10,000-entry id maps and the "
        "swap frees the old ones; a writer alone, 150 batches, 2 alternated runs each: "
        "median 0.10 -> 0.61 ms, mean with the matrix's growth 0.50 -> 0.80), and "
        "in the same time the slower writer applied fewer batches (128-192 against "
        "202-294 a run), which favours the new code in that comparison. That copy is gone: "
        "the index is append-only (a fork shares every array and map, a write appends rows "
        "and stamps the ones it removes with its epoch, compaction runs in the writer; "
        "`context/vector_index.py`): writer CPU per 32-memory batch, 10,000 memories, 200 "
        "standing searches, a quarter of each batch rewrites, 2 alternated runs at load 14: "
        "median 2.91 / 3.20 ms before, 1.49 / 1.51 after. On the server, the loop passes "
        "(cache on, SQLite, 10,000 memories, 2 clients x 100, this script's loop workload), "
        "3 alternated pairs of servers before (6d81ff3) and after, load 11-14 from others' "
        "jobs: novel-prompt retrieve p99 0.70x [0.58, 1.55] (114 -> 80 ms), mean 1.13x "
        "[0.99, 1.29], p50 1.15x [1.05, 1.35]; 8 prompts repeated p99 1.18x [0.77, 1.96], "
        "p50 0.80x [0.71, 0.87]; a computed retrieve's CPU on the server 2.0 ms at the "
        "median either way: at that load the tail is the run queue and the learner's "
        "interpreter lock, not the view's write (below).",
        "",
        "What the slowest 1% of loop retrieves waited for (issue 15), on a server "
        "instrumented per request (the event loop's part, the thread pool's part with its "
        "thread's CPU and run-queue time from the kernel's schedstat, and the learning "
        "worker's batches, view writes and hot-read refreshes timed), cache-on loop passes "
        "as here (SQLite, 10,000 memories, 2 clients x 100, load 8-15 from others' jobs): "
        "the slowest retrieves overlapped a learner batch (30-95 ms of the niced worker's "
        "CPU each, most of it Python holding the interpreter lock: the roles, a full scan "
        "per new memory for its de-duplication probe, the SQL, 15-19 ms of hot-read "
        "refreshes a batch in the repeated pass) and spent their time in the run queue "
        "(10-80 ms) or waiting on the event loop before or after the thread pool (40-70 ms, "
        "hits on the loop included), while their own CPU was 2-5 ms; the view's write was "
        "1-3 ms of a batch and no Redis call was among the waits. The workload this script "
        "ran until then keyed each learned memory by its text, which the worker embedded in "
        "the server beside the retrieves (the loop's trajectories key it by the prompt's "
        "embedding, which the retrieve computed): the loop workload is now the loop's, "
        "playbook read included. The learner's placement, alternated, 2 runs each at load "
        "12-15: learner thread at nice 10 (the default) loop retrieve p99 186 ms [161, 213], "
        "p50 35, mean 45; at nice 0 147 [126, 179], p50 10.6, mean 19; 8 prompts repeated "
        "84 [72, 108] against 56 [46, 73]: a worker at nice 10 that holds the interpreter "
        "lock and loses its core stalls every thread of the server (priority inversion), "
        "and with memory keyed by the prompt nearly all its work holds the lock. The "
        "append-only view write (above) removed the view's copy; the learner's priority "
        "and placement are its own module's settings, left to it.",
        "",
        "The learner's batch (issue 15, this stop): its de-duplication probe is one matrix "
        "product of the batch's new memories with the view (`MemoryIndex.search_many`, one "
        "BLAS thread, the interpreter lock released) and one of the batch with itself, not a "
        "scan of the domain per new memory (the same survivors: "
        "`tests/context/test_learn_batch_probe.py`); a reinforced memory (its vector, outcome "
        "and creation time unchanged) no longer drops the standing searches it ranks in; the "
        "learner thread runs at nice 0 by default. Worker CPU per learned trajectory in "
        "process (10,000 memories, SQLite, 2 alternated runs each at nice 10, load 5.7-9.4): "
        "novel prompts 4.68 / 3.55 ms before, 4.25 / 2.60 after; 8 prompts repeated 3.41 / "
        "2.86 before, 2.24 / 1.72 after. On the server, the cache-on loop passes as here "
        "(SQLite, 10,000 memories, 2 clients x 100 pairs, one server a run), 5 alternated "
        "pairs of the code before (1843925, learner at nice 10) and after (nice 0), load "
        "1.5-3.3: novel-prompt retrieve p99 29.2 ms before, 39.6 after, 1.36x [0.82, 2.23] (a "
        "tie), p50 1.11x [1.05, 1.17], mean 1.18x [1.11, 1.24] (three pairs level, the two at "
        "load 2.6-3.3 slower: intervals over requests, not runs); 8 prompts repeated p99 "
        "1.13x [0.91, 1.47] (a tie), p50 0.90x [0.85, 0.94]; server CPU over the repeated "
        "pass 0.95 s against 1.16 (medians). The after code at nice 10, 3 runs: novel p99 "
        "33.2, p50 7.2; repeated p99 13.8, p50 2.1. So at this low load the change does not "
        "move the loop retrieve's tail; the four loop rows stay not met. This stop's full run "
        "(load 12-19 during its SQLite phase, 6.2 at the end) read SQLite cached search p99 "
        "443 ms at 36 hits/s against 1,083 at the last stop, in a phase with no learning: the "
        "machine's load, so its table was not committed (the section kept the stop before's); its "
        "Postgres loop retrieve p99 31.8 ms [23.1, 46.7], 8 prompts repeated 14.8 [9.5, "
        "20.9].",
        "",
        "Where the loop retrieve's tail waits beside the writes (issue 15, a later "
        "stop): a server stamped per request (the event loop's part, the thread "
        "pool's, the learn queue's inserts, the learner's batch and its steps, each "
        "with its thread's CPU and run-queue time from the kernel's schedstat, and a "
        "1 ms sleep probe), cache-on loop passes as here (10,000 memories, 2 clients "
        "x 100 pairs, one server a run, 20 runs, load 6-13 from others' jobs). No "
        "retrieve read a database row on either back end (the domain's version came "
        "from the board, the view was current at it), so neither SQLite's busy "
        "handler nor a lock on the Postgres domain row is on a retrieve's path. On "
        "SQLite 3-4% of the queue inserts met the learner's write transaction (then "
        "3-5 ms blocked at the median; a submit's p50 0.4 ms): the busy handler's "
        "sleeps lengthen a few learns, not the retrieves. The writes reach the "
        "retrieve through the cores and the interpreter lock: the slowest tenth of "
        "novel-prompt retrieves overlapped a learner batch 65-75% of the time against "
        "19-28% of all retrieves (Postgres 40% against 18%), and a batch took 18-19 "
        "ms of the learner thread's CPU at the median over 50-73 ms of wall time, "
        "mostly in the run queue; a retrieve beside it waited in the run queue or for "
        "the interpreter lock while using 2-5 ms of CPU (the worst seen: 64 ms in the "
        "thread pool with 3.3 ms of CPU and 3.9 ms in the run queue, while the "
        "learner, holding the lock, waited for a core). A 1 ms switch interval, "
        "alternated with the default: 0.32x [0.16, 0.56] of the novel-prompt p99 over "
        "2 pairs, then 1.60x [0.75, 2.80] over the next 3: not kept. On Postgres a "
        "submit's queue insert took 1.0 ms of CPU at the median on SQLAlchemy's Core "
        "path, half a computed retrieve's 2.2 ms, in a request thread: it now runs on "
        "the driver as SQLite's does (0.60-0.84 -> 0.24-0.35 ms of CPU an enqueue in "
        "process, 3 alternated runs; a submit's thread on the server 1.37 -> 0.81 ms "
        "at the median). On the server, 5 alternated pairs (Postgres, load 8-12): "
        "novel-prompt retrieve p99 54.5 ms before, 64.7 after, 1.19x [0.99, 1.36] (a "
        "tie; in every pair the first server run did better, whichever code it ran), "
        "8 prompts repeated 25.0 against 69.8 (per run 24 / 18 / 119 / 14 / 14 "
        "before, 72 / 71 / 33 / 24 / 70 after: the second-worst of 200 reads); server "
        "CPU over a novel-prompt pass 3.0-3.1 s before, 2.7-3.2 s after. So the "
        "retrieve's tail at this load is the machine's cores and the learner's share "
        "of the interpreter lock, not the storage's waits; the four loop rows stay "
        "not met.",
        "",
        "Throughput ratios are ratios of mean latencies (closed loop, same clients); "
        "[95% bootstrap interval] over requests.",
        "",
        CONTENTION.format(load=machine_load()),
    ]
    write_section("context_service", "\n".join(body))
    write_results("context_service", command, goal_list)


if __name__ == "__main__":
    main()
