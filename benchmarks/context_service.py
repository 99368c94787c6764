"""Context service benchmark: memory search and delta apply over loopback HTTP, on SQLite and
Postgres, with the cache on and off, against a brute-force scan of the same queries.

    .venv/bin/python benchmarks/context_service.py [--items 10000] [--clients 2] [--quick]

One domain holds `--items` ReasoningBank memories (distilled from trajectories of the task
family, embedded with all-MiniLM-L6-v2) and 40 playbook bullets. For each back end a
`uvicorn` process serves `trifecta.context.service` on loopback, once with the cache (views,
result cache, Redis) and once without (every request reads the shard and scans). `--clients`
client processes send requests in a closed loop (the next when the last returns):

- search: 200 distinct task prompts, each asked many times (top-5 memories). With the cache,
  the first request of each prompt is reported separately (it embeds the query and scans).
- delta apply: one TAG operation per request, each a new op id (every request writes).
- baseline: the same search prompts answered in this process by a plain brute-force scan
  (read every embedding of the domain from the database, score, sort), which is also the
  ground truth for the service's recall.

Goal: cached search p99 under 5 ms and at least 10x the uncached throughput, 10,000 items.
Requires Postgres and Redis (`make bench` starts them; `scripts/services.sh env` names them).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
from benchmarks._report import write_section
from trifecta.context import tables
from trifecta.context.deltas import AddOp, Delta
from trifecta.context.facade import ContextService
from trifecta.context.memory import memory_id_for, memory_text, structured_draft
from trifecta.context.models import MemoryDraft
from trifecta.context.store import PendingMemory, ShardStore
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.core.db import get_engine, transaction
from trifecta.core.embeddings import get_embedder
from trifecta.core.settings import get_settings
from trifecta.core.tasks import generate_tasks
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.registry import CapsuleRegistry

console = Console()
HEADING = "## Context service: search and delta apply over HTTP"
METHOD = (
    "One domain of {items} ReasoningBank memories (distilled from task-family trajectories, "
    "embedded with all-MiniLM-L6-v2) and 40 bullets. The service runs in its own `uvicorn` "
    "process on loopback; {clients} client processes send requests in a closed loop. Search "
    "asks 200 distinct task prompts many times (top-5). *Cache off*: every request embeds the "
    "query and scans every embedding of the domain read from the shard. *Cache on*: the per-domain "
    "in-process view plus the result cache keyed by (domain, version, request), shared through "
    "Redis; its first request of each prompt is listed separately. Delta apply: one TAG per "
    "request, each with a new op id, so every request writes. Baseline: the same prompts "
    "answered in the benchmark process by a brute-force scan (embed, read all embeddings, "
    "score, sort); recall@5 is against the exact top-5 of the stored vectors."
)
CONTENTION = (
    "Server, clients and databases share the machine's cores; run on an otherwise idle "
    "machine (`make bench`), since other load reaches every p99."
)
DOMAIN, CAPSULE = "bench", "bench-twin"
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


def brute_force(url: str, queries: list[str], clients: int, per_client: int, k: int = 5) -> Run:
    """The baseline: per query, embed it, read every embedding of the domain, score, sort."""
    store = ShardStore(url)
    embedder = get_embedder()

    def answer(_client: int, i: int) -> list[str]:
        vector = embedder.embed([queries[i % len(queries)]])[0]
        ids, matrix = domain_matrix(store)
        return [ids[j] for j in np.argsort(-(matrix @ vector))[:k]]

    return closed_loop("brute-force scan (baseline)", clients, per_client, answer)


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


@dataclass
class Plan:
    items: int
    clients: int
    cached: int  # search requests per client, cache on (after each query's first sight)
    uncached: int  # search requests per client, cache off, and for the brute-force baseline
    deltas: int  # delta requests per client


def run_backend(
    backend: str,
    url: str,
    redis_url: str,
    plan: Plan,
    drafts: list[MemoryDraft],
    vectors: np.ndarray,
    queries: list[str],
    query_vectors: np.ndarray,
    data_dir: Path,
) -> list[tuple[str, Run, float | None]]:
    import redis

    console.print(f"[bold]{backend}[/]: seeding {plan.items} memories")
    bullets = seed(url, drafts, vectors)
    truth = exact_top(url, queries, query_vectors)
    rows: list[tuple[str, Run, float | None]] = []
    rows.append(("search", brute_force(url, queries, plan.clients, plan.uncached), None))
    for cache in (False, True):
        redis.Redis.from_url(redis_url).flushdb()
        server = Server(url, redis_url, cache, data_dir)
        try:
            c = plan.clients
            if cache:
                first, found = http_clients(
                    "cache on, first request of a query",
                    server.url,
                    search_requests(queries, c, len(queries) // c, 1),
                )
                rows.append(("search", first, recall(found, truth)))
                run, found = http_clients(
                    "cache on", server.url, search_requests(queries, c, plan.cached, 2)
                )
            else:
                run, found = http_clients(
                    "cache off", server.url, search_requests(queries, c, plan.uncached, 3)
                )
            rows.append(("search", run, recall(found, truth)))
            deltas, _ = http_clients(
                "cache on" if cache else "cache off",
                server.url,
                delta_requests(bullets, c, plan.deltas, f"{backend}-{cache}"),
            )
            rows.append(("delta apply", deltas, None))
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    args = parser.parse_args()
    postgres, redis_base = (
        os.environ.get("TRIFECTA_TEST_POSTGRES_URL"),
        os.environ.get("TRIFECTA_TEST_REDIS_URL"),
    )
    if not postgres or not redis_base:
        sys.exit("needs TRIFECTA_TEST_POSTGRES_URL and TRIFECTA_TEST_REDIS_URL (run `make bench`)")
    plan = Plan(args.items, args.clients, *((150, 10, 40) if args.quick else (1500, 40, 150)))
    redis_url = redis_base.rsplit("/", 1)[0] + "/13"

    drafts = memory_drafts(plan.items)
    queries = [t.prompt for t in generate_tasks(200, seed=9, split="heldout", domain=DOMAIN)]
    vectors, query_vectors = embeddings([memory_text(d) for d in drafts], queries)

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
            queries,
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
                queries,
                query_vectors,
                data_dir,
            )
        finally:
            drop()
    report(results, plan)


def report(results: dict[str, list[tuple[str, Run, float | None]]], plan: Plan) -> None:
    table = Table(title=f"context service, {plan.items} memories, {plan.clients} clients")
    for column in ("back end", "operation", "mode", "req/s", "p50 ms", "p99 ms", "recall@5"):
        table.add_column(column, justify="right")
    lines = [
        "| back end | operation | mode | requests/s | p50 ms | p99 ms | recall@5 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for backend, rows in results.items():
        for op, run, rec in rows:
            cells = [
                backend,
                op,
                run.name,
                f"{run.throughput:.1f}",
                f"{run.pct(50):.2f}",
                f"{run.pct(99):.2f}",
                "" if rec is None else f"{rec:.3f}",
            ]
            table.add_row(*cells)
            lines.append("| " + " | ".join(cells) + " |")
        search = {run.name: run for op, run, _ in rows if op == "search"}
        cached, uncached = search["cache on"], search["cache off"]
        baseline = search["brute-force scan (baseline)"]
        ratio, vs_scan = (
            cached.throughput / uncached.throughput,
            cached.throughput / baseline.throughput,
        )
        ok = cached.pct(99) < 5 and ratio >= 10
        verdicts.append(
            f"{backend}: cached search p99 {cached.pct(99):.2f} ms (goal < 5 ms), "
            f"{ratio:.0f}x the uncached throughput (goal >= 10x), {vs_scan:.0f}x the "
            f"brute-force scan: goal {'met' if ok else 'NOT met'}"
        )
    console.print(table)
    for line in verdicts:
        console.print(line)
    command = (
        f"`.venv/bin/python benchmarks/context_service.py --items {plan.items} "
        f"--clients {plan.clients}` (`make bench` runs it with Postgres and Redis started)."
    )
    body = [HEADING, "", command, "", METHOD.format(items=plan.items, clients=plan.clients), ""]
    body += [*lines, "", *[f"- {v}" for v in verdicts], "", CONTENTION]
    write_section("context_service", "\n".join(body))


if __name__ == "__main__":
    main()
