"""The loop's context hop: synchronous learning (the old path) against the learn queue and
live views (the new path, its learning worker in a process of its own, and in a thread of
the serving process as before), on the same workload in one run.

    .venv/bin/python benchmarks/context_hop.py [--rounds 6] [--requests 100]

Per request the loop makes one retrieval (the prompt as query, 3 memories) and one learn
(`orchestrator/loop.py`). The workload is `trifecta run`'s (`build_workload`: 8 capsules in
4 domains, a quarter of the requests re-asking standing queries), each domain seeded with
four routing-rule bullets that the trajectories tag. Each path has its own SQLite shard and
`ContextService` (no Redis: versions come from the shard), one real MiniLM embedder shared,
torch on one thread:

- old: `retrieve` then `learn` (reflect, curate, distil, written before the hop returns; the
  next retrieval finds a new version and catches its view up from the shard);
- new: `retrieve` then `submit` (committed to the queue), learned by the learner process
  (`learning_process` on), whose batches reach this process's live view as reads
  of the rows newer than the view holds. A round ends when `drain` returns, so the learning
  is inside the round's time;
- thread: the new path with the worker in a thread of the serving process (the setting
  off), which applies its rows to the live view itself.

The trajectories ask for the loop's memory key (`memory_key="query"`, as
`orchestrator/trace.py` sets it): on the new paths a memory is keyed by the prompt's
embedding, which the retrieval computed and `submit` queues with the row, so the learner
embeds nothing for it. The old path's `learn` keys by the memory text whatever the
trajectory asks (it embeds it), as it always did. `--memory-key text` keys the new paths'
memories by their text too (this benchmark's trajectories before 2026-12-07).

The rounds rotate which path goes first and continue the same databases (the domains
grow). Figures: the hop's request-path latency (bootstrap intervals over requests) and each
round's throughput including the drain (bootstrap over the paired per-round ratios).
Goals (from issue 15's 10x target for `trifecta run`, ~18 req/s today): the new hop sustains
at least 180 requests/s with its learning included, and it is at least 3x the old path's;
the process is the default only if it is at least the thread's throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks._report import (
    Goal,
    bootstrap_median,
    bootstrap_ratio,
    cpu_name,
    goals_markdown,
    machine_load,
    write_results,
    write_section,
)
from trifecta.context.deltas import AddOp, Delta
from trifecta.context.facade import ContextService
from trifecta.context.models import Retrieval, RetrieveRequest
from trifecta.context.settings import ContextSettings
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.core.db import get_engine
from trifecta.core.embeddings import MiniLMEmbedder, get_embedder
from trifecta.fleet.capsules import Capsule, Demand
from trifecta.fleet.fleetfile import generate_fleet
from trifecta.fleet.registry import CapsuleRegistry
from trifecta.orchestrator.context_hop import MEMORIES_PER_REQUEST
from trifecta.orchestrator.workload import WorkItem, build_workload

NAME = "context_hop"
MemoryKey = Literal["query", "text"]
DOMAINS = ["plant", "grid", "water", "rail"]
RULES = [
    ("routing", "start: lookup_chain tasks start on the medium tier"),
    ("routing", "no-edge: add tasks stay off the edge"),
    ("strategies", "Read the named sensor from the telemetry before computing."),
    ("pitfalls", "A minus sign binds to the next term only."),
]
GOAL_RPS = 180.0
GOAL_SPEEDUP = 3.0


def fleet() -> list[Capsule]:
    return [
        Capsule(
            id=f"twin-{domain}-{i}",
            name=f"{domain} twin {i}",
            kind="digital_twin",
            domain=domain,
            demand=Demand(requests_per_s=1.0 + i),
        )
        for domain in DOMAINS
        for i in range(2)
    ]


PATHS = ("old", "new", "thread")


def open_service(url: str, capsules: list[Capsule], *, path: str) -> ContextService:
    """Each path in its configuration: the new paths' worker embeds with a model instance of
    its own (the process's in its process), the old path has one for everything."""
    CapsuleRegistry(get_engine(url)).add_many(capsules)
    service = ContextService(
        control_url=url,
        embedder=get_embedder(),
        learning_embedder=MiniLMEmbedder if path != "old" else None,
        settings=ContextSettings(learning_process=path == "new"),
        redis_url="",
    )
    for capsule in capsules[:: len(capsules) // len(DOMAINS)]:
        ops = [
            AddOp(op_id=f"rule-{i}", section=section, content=text)
            for i, (section, text) in enumerate(RULES)
        ]
        service.apply_delta(capsule.id, Delta(ops=ops))
    return service


def trajectory(
    item: WorkItem, retrieval: Retrieval, serial: str, memory_key: MemoryKey = "query"
) -> Trajectory:
    """What the loop would learn from: the verifier's verdict (4 in 5 correct here), the
    layer path by difficulty, the bullets that were in context, and the loop's key for its
    memory (`orchestrator/trace.py`: the prompt's embedding, which the retrieval computed;
    `text`: the memory text's, as this benchmark's trajectories were before)."""
    task = item.task
    correct = hashlib.blake2b(task.id.encode(), digest_size=1).digest()[0] % 5 != 0
    layer = "edge" if task.difficulty <= 2 else "cognitive"
    return Trajectory(
        id=f"hop-{serial}",
        capsule_id=item.capsule_id,
        task_id=task.id,
        task_kind=task.kind,
        difficulty=task.difficulty,
        prompt=task.prompt,
        answer=task.answer if correct else "0",
        outcome="success" if correct else "failure",
        judge="verifier",
        verdict_detail=None if correct else f"expected {task.answer}",
        steps=[TrajectoryStep(layer=layer, tier="node-1" if layer == "edge" else "small")],
        bullet_ids=[b.bullet.id for b in retrieval.bullets],
        memory_key=memory_key,
    )


def run_hit_rates(requests: int = 600, capsules: int = 30, seeds: int = 5) -> list[float]:
    """The query cache's hit rate on `trifecta run`'s workload (a generated fleet of 30
    capsules, 600 requests, one cache per run), counted exactly: a retrieval hits when its
    prompt was asked earlier in the run (4,096 entries never evict at this size)."""
    fleet_ = generate_fleet(capsules, seed=0)
    rates = []
    for seed in range(seeds):
        seen: set[str] = set()
        hits = 0
        for item in build_workload(fleet_, requests, seed=seed):
            hits += item.task.prompt in seen
            seen.add(item.task.prompt)
        rates.append(hits / requests)
    return rates


@dataclass
class Round:
    hop_ms: list[float] = field(default_factory=list)
    retrieve_ms: list[float] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    drain_s: float = 0.0
    cpu_s: float = 0.0  # the serving process's CPU over the round (not the learner process's)

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s / len(self.hop_ms) * 1e3

    @property
    def rps(self) -> float:
        return len(self.hop_ms) / self.seconds


def run_round(
    service: ContextService,
    items: list[WorkItem],
    new: bool,
    tag: str,
    memory_key: MemoryKey = "query",
    clients: int = 1,
) -> Round:
    """The items' hops, served by `clients` threads at once (each takes the next item, as
    the loop's workers take requests); one client serves them in order."""
    result = Round()
    lock = threading.Lock()
    position = iter(enumerate(items))

    def client() -> None:
        while True:
            with lock:
                taken = next(position, None)
            if taken is None:
                return
            i, item = taken
            t0 = time.perf_counter()
            request = RetrieveRequest(query=item.task.prompt, k_memories=MEMORIES_PER_REQUEST)
            retrieval = service.retrieve(item.capsule_id, request)
            t1 = time.perf_counter()
            learned = trajectory(item, retrieval, f"{tag}-{i}", memory_key)
            if new:
                service.submit(learned)
            else:
                service.learn(learned)
            t2 = time.perf_counter()
            with lock:
                result.retrieve_ms.append((t1 - t0) * 1e3)
                result.write_ms.append((t2 - t1) * 1e3)
                result.hop_ms.append((t2 - t0) * 1e3)

    started, cpu = time.perf_counter(), time.process_time()
    if clients == 1:
        client()
    else:
        with ThreadPoolExecutor(clients, thread_name_prefix="client") as pool:
            for done in [pool.submit(client) for _ in range(clients)]:
                done.result()  # a client's error fails the round
    if new:
        t3 = time.perf_counter()
        if not service.drain(timeout=600):
            raise SystemExit("the learn queue did not drain in 600 s")
        result.drain_s = time.perf_counter() - t3
    result.seconds = time.perf_counter() - started
    result.cpu_s = time.process_time() - cpu
    return result


def paired_ratio(top: list[Round], bottom: list[Round]) -> tuple[float, float, float]:
    """The median ratio of paired rounds' throughputs and its bootstrap interval."""
    ratios = [a.rps / b.rps for a, b in zip(top, bottom, strict=True)]
    return bootstrap_median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=100, help="per round and path")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--memory-key",
        choices=["query", "text"],
        default="query",
        help="what a learned memory is keyed by: the prompt's embedding (the loop's) or its text",
    )
    parser.add_argument(
        "--clients",
        default="1,8",
        help="comma-separated client counts: each round serves its requests with each count"
        " (threads taking the next request, as the loop's workers do; 1: one after another)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    try:
        args.clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        parser.error(f"--clients: not a comma-separated list of integers: {args.clients!r}")
    if not args.clients or min(args.clients) < 1:
        parser.error(f"--clients: each count must be at least 1, got {args.clients}")
    import torch

    torch.set_num_threads(1)
    console = Console()
    capsules = fleet()
    slices = args.rounds * len(args.clients) + 1  # each round and client count its own items
    workload = build_workload(capsules, args.requests * slices, seed=args.seed)
    distinct = len({(w.capsule_id, w.task.prompt) for w in workload})
    folder = Path(tempfile.mkdtemp(prefix="context-hop-"))
    services = {
        path: open_service(f"sqlite:///{folder / f'{path}.db'}", capsules, path=path)
        for path in PATHS
    }
    for service in services.values():
        service.warm_up()  # the learner process loads its model here
    warm = workload[: args.requests]
    for name, service in services.items():  # views built, code paths warm: not measured
        run_round(service, warm, name != "old", "warm", args.memory_key)
    rounds: dict[tuple[str, int], list[Round]] = {
        (path, c): [] for path in PATHS for c in args.clients
    }
    with Progress(console=console) as progress:
        bar = progress.add_task("rounds", total=args.rounds * len(PATHS) * len(args.clients))
        for r in range(args.rounds):
            order = PATHS[r % len(PATHS) :] + PATHS[: r % len(PATHS)]
            for k, clients in enumerate(args.clients):
                at = args.requests * (1 + r * len(args.clients) + k)
                items = workload[at : at + args.requests]
                for name in order:
                    rounds[name, clients].append(
                        run_round(
                            services[name],
                            items,
                            name != "old",
                            f"r{r}c{clients}",
                            args.memory_key,
                            clients,
                        )
                    )
                    progress.advance(bar)
    stats = services["new"].learning_stats()
    for service in services.values():
        service.close()
    report(console, args, rounds, stats, distinct, len(workload))


def report(
    console: Console,
    args: argparse.Namespace,
    rounds: dict[tuple[str, int], list[Round]],
    stats: dict[str, int],
    distinct: int,
    total: int,
) -> None:
    def flat(key: tuple[str, int], attr: str) -> list[float]:
        return [v for r in rounds[key] for v in getattr(r, attr)]

    table = Table(title="context hop: retrieve + learn per request")
    columns = ("path", "clients", "hop p50 ms [95%]", "hop p99 ms", "retrieve p50")
    for column in (*columns, "learn/submit p50", "serving CPU ms a request"):
        table.add_column(column)
    table.add_column("req/s incl. learning")
    rows: list[str] = []
    for clients in args.clients:
        for name in PATHS:
            key = (name, clients)
            p50, low, high = bootstrap_median(flat(key, "hop_ms"))
            rps = [r.rps for r in rounds[key]]
            cells = [
                name,
                str(clients),
                f"{p50:.2f} [{low:.2f}, {high:.2f}]",
                f"{np.percentile(flat(key, 'hop_ms'), 99):.1f}",
                f"{np.median(flat(key, 'retrieve_ms')):.2f}",
                f"{np.median(flat(key, 'write_ms')):.2f}",
                f"{np.median([r.cpu_ms for r in rounds[key]]):.2f}",
                f"{np.median(rps):.0f} ({min(rps):.0f}-{max(rps):.0f})",
            ]
            table.add_row(*cells)
            rows.append("| " + " | ".join(cells) + " |")
    console.print(table)
    goals: list[Goal] = []
    for clients in args.clients:
        # The one-client rows keep their names (the figures before client counts existed).
        at = "" if clients == 1 else f", {clients} clients"
        old, new, thread = (rounds[p, clients] for p in ("old", "new", "thread"))
        goals += [
            Goal.of(
                f"new hop throughput (learner process), learning included{at}",
                bootstrap_median([r.rps for r in new]),
                at_least=GOAL_RPS,
                unit=" req/s",
            ),
            Goal.of(
                f"throughput new / old (paired rounds){at}",
                paired_ratio(new, old),
                at_least=GOAL_SPEEDUP,
                unit="x",
            ),
            Goal.of(
                f"hop p50 old / new (request path){at}",
                bootstrap_ratio(flat(("old", clients), "hop_ms"), flat(("new", clients), "hop_ms")),
                at_least=GOAL_SPEEDUP,
                unit="x",
            ),
            Goal.of(
                f"throughput learner process / learner thread (paired rounds){at}",
                paired_ratio(new, thread),
                at_least=1.0,
                unit="x",
                note="the process is the default only if it is not slower",
            ),
        ]
    for g in goals:
        console.print(f"{g.claim}: {g.figure:.2f}{g.unit} {g.interval()} -> {g.verdict()}")
    console.print(f"worker and query cache: {stats}")
    rates = run_hit_rates()
    hit_rate = stats["query_hits"] / max(1, stats["query_hits"] + stats["query_misses"])
    command = f"benchmarks/context_hop.py --rounds {args.rounds} --requests {args.requests}"
    command += f" --clients {','.join(map(str, args.clients))}"
    if args.memory_key != "query":
        command += f" --memory-key {args.memory_key}"
    write_results(NAME, command, goals)
    if args.no_write:
        return
    lines = [
        f"## {NAME}: the loop's context hop, synchronous learning vs the learn queue",
        "",
        f"`.venv/bin/python {command}`: {cpu_name()}; {machine_load()} at the end of the run"
        " (other engineers' jobs share the two cores: figures move with their load).",
        "",
        f"{args.rounds} rounds x {args.requests} requests per path and client count after a"
        " warm-up round (each client count its own requests of the same workload; clients:"
        " threads taking the next request, as the loop's workers do), same"
        " workload (`trifecta run`'s: 8 capsules, 4 domains), SQLite shards, no Redis, torch on"
        " one thread. Hop = retrieve + learn (old) or retrieve + submit (new: the learner"
        " process; thread: the worker in a thread of the serving process, as"
        " before); throughput counts each round's wall time including the drain. Memories"
        f" keyed by {'the prompt' if args.memory_key == 'query' else 'their text'}'s"
        " embedding on the new paths (`--memory-key`; the old path's `learn` embeds the text).",
        "",
        "| path | clients | hop p50 ms [95%] | hop p99 ms | retrieve p50 ms"
        " | learn/submit p50 ms | serving-process CPU ms a request, median"
        " | req/s incl. learning, median (range over rounds) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *goals_markdown(goals),
        "",
        f"Query-embedding cache on the new path: {stats['query_hits']} hits in"
        f" {stats['query_hits'] + stats['query_misses']} retrievals ({hit_rate:.0%});"
        f" the workload has {distinct} distinct (capsule, prompt) pairs in {total} requests."
        f" Learner process: {stats['learned']} trajectories learned in {stats['batches']}"
        f" batches ({stats['failed']} refused), started {stats['learner_starts']} time(s). On `trifecta run`'s own workload (30 generated"
        f" capsules, 600 requests, seeds 0-4) the cache would hit {min(rates):.0%}-"
        f"{max(rates):.0%} of retrievals: the repeats are the standing queries, which a capsule"
        " asks again within a run (the first ask of each misses).",
    ]
    write_section(NAME, "\n".join(lines))


if __name__ == "__main__":
    main()
