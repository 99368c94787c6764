"""The request path at the speed of its layers: `trifecta run`'s workload through the loop,
beside the same tasks sent to the layers directly, in-process and federated, in one run.

Baseline in the same run: each task of the workload handed straight to its layer (the edge
mesh for light tasks, the serving layer's cascade for the rest), one at a time, with no
context hop, no routing, no verifier, no request log. Then a workload through the loop one
request at a time (the latency pass: the same conditions as the direct calls, so the edge
ratio compares like with like), then through the loop as `trifecta run` serves it
(`--workers` at once, learning on), `--repeats` times (the throughput passes; latency there
is mostly queueing, by Little's law); then, unless `--no-federated`, through environment
servers started by `trifecta up` on loopback.

Goals (from the federation issue): throughput at least 10x the ~18 requests/s measured before
this change on this machine kind (`trifecta run`, in-process default, learning on); edge-route
p50 at most 3x the direct edge call; the federated run's overhead per request stated.

    .venv/bin/python benchmarks/loop.py [--requests 300] [--repeats 3] [--workers 16]
        [--no-federated]
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import psutil
from rich.console import Console
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
from trifecta.cognitive.backends.base import SamplingOptions
from trifecta.cognitive.serving.tenants import Tenant
from trifecta.core.logging import configure_logging
from trifecta.core.settings import Settings
from trifecta.federation.bridge import placeable
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.run import DEFAULT_WORKERS, drain_learning, serve_workload
from trifecta.orchestrator.stack import Stack
from trifecta.orchestrator.workload import WorkItem, build_workload

BEFORE_RPS = 18.0  # `trifecta run` before this change (issue 15), same machine kind
THROUGHPUT_GOAL = 10 * BEFORE_RPS
EDGE_RATIO_GOAL = 3.0
CPU_MS: list[float] = []  # CPU a request, serving and draining, per throughput pass
CHILD_CPU_MS: list[float] = []  # of which in child processes (the context learner's)
ENGINE_CPU_MS: list[float] = []  # of which on the serving engines' decoding threads
QUERY_EMBEDS: list[tuple[int, int]] = []  # (query-cache misses, encoder calls) per pass
SWITCHES: list[float] = []  # voluntary context switches a request (every thread), per pass
# Where the CPU goes, from a profile (py-spy at 67 Hz attached 3 s after serving began, 40 s of
# `trifecta run --requests 6000 --workers 16 --seed 7` on a fresh data directory, load ~1,
# 2026-12-07, HEAD d9c48df: the request log and learn queue on Core connections, the learner's
# statements built once, the edge mesh calling in-process nodes directly, the packed-weight
# MiniLM; learning in a thread of the server, the default; waits in Python's locks, queues and
# the event loop left out), kept beside the figures because re-profiling is not part of this
# script. Shares of the samples of running or runnable threads; `budget_rows` turns them into
# ms at this run's measured CPU a request.
PROFILE_ROWS = [
    ("cognitive tiers: forward passes (the scripted step)", 16.1),
    ("cognitive serving: batching engine, sampling, cascade, thresholds snapshot", 11.0),
    ("query embeddings (MiniLM, TorchScript, packed weights)", 9.0),
    ("context learner (a thread): SQL 13.0, MiniLM 3.6, the rest 2.3", 18.9),
    ("edge mesh (in-process nodes called directly)", 12.7),
    (
        "the loop's SQL: request log 8.2, learn-queue insert 7.7, domain version read 6.8, "
        "capsule read 6.4, other 0.2",
        29.3,
    ),
    ("the loop's own Python and the context search", 2.7),
    ("other (threads, event loop)", 0.3),
]
PROFILE_NOTE = (
    "What bounds it: at 180 requests/s two cores give each request 11 ms of CPU, learning "
    "included. The budget below (py-spy, 67 Hz, 40 s of `trifecta run --requests 6000 "
    "--workers 16 --seed 7` after it began serving, load ~1; waits in locks, queues and the "
    "event loop left out; taken on d9c48df) counts the samples of threads running or "
    "runnable, so a thread back from SQLite or torch that waits for a core or for the GIL "
    "counts where it waits: the single-row reads (the domain's version and the capsule, "
    "about 20 us each when timed alone) weigh far more here than their own work, and SQLite "
    "as a whole (42% here) is overstated: a native profile put most of the loop's time "
    "inside SQLite calls in re-taking the GIL. Sampling only the thread holding the GIL "
    "(`--gil`, the same run's settings) found it held in 26% of the samples (the cognitive "
    "serving engine 31% of those, the loop's Python and context search 18%, the learner's "
    "SQL 12%, the edge mesh 10%): the GIL is not what bounds the loop. In ms at this run's "
    "median CPU a request:"
)


# Where the CPU goes by thread, and natively (measured, not sampled while runnable): kept beside
# the py-spy budget because that one counts a thread waiting for a core or the GIL where it waits.
CPU_NOTE = (
    "Measured by thread instead (issue 15, 2026-12-07, at 352d99d's loop: each thread's CPU "
    "from the kernel over 300-request 16-worker passes after a warm one, six alternated pairs "
    "with the loop before it, load 5-12 from other jobs, so the per-operation figures are "
    "inflated): 10.9 ms a request, of which the request threads 3.6 (the edge model runs on "
    "them, with the request log's and learn queue's commits and the cognitive rungs' "
    "submission), the retrieval threads 1.7 (query embeddings and the context search), the "
    "serving engines' threads 3.6 (the tiers' forwards about 70% of it) and the context "
    "learner's thread 1.4. A native profile (perf, 997 Hz, one 600-request pass) put 28% of "
    "the process's CPU in the interpreter, 35% in torch and its JIT kernels, 22% in the "
    "kernel (switching threads: 50-80 voluntary context switches a request, most of them "
    "waits on the GIL's mutex and condition), 7% in malloc and 1.9% in SQLite itself: the "
    "loop's SQL costs in the Python around it and the thread switches it causes, not in "
    "SQLite. The same operations cost several times more in the run than alone (the capsule "
    "read 117 against 13 us, the playbook hop 400 against 57, a request-log save ~600 against "
    "287): fewer hand-offs between threads is where the next milliseconds are."
)


def budget_rows(cpu_ms: float) -> list[str]:
    rows = ["| where | share of CPU | ms a request |", "|---|---:|---:|"]
    for what, share in PROFILE_ROWS:
        rows.append(f"| {what} | {share:.1f}% | {share * cpu_ms / 100:.1f} |")
    rows.append(f"| total | 100% | {cpu_ms:.1f} (budget at 180 req/s: 11) |")
    return rows


def direct_calls(stack: Stack, items: list[WorkItem]) -> dict[str, list[float]]:
    """Each task straight to its layer: ms per call, by route."""
    auto = stack.cognitive.auto if stack.cognitive else None
    assert auto is not None
    out: dict[str, list[float]] = {"edge": [], "cognitive": []}
    for item in items:
        capsule = stack.capsules.get(item.capsule_id)
        meshes = [
            stack.meshes[e.name]
            for e in placeable(capsule, [stack.topology.environment(n) for n in stack.meshes])
        ]
        started = time.perf_counter()
        if item.task.light and meshes:
            result = meshes[0].offload(capsule, [item.task.prompt], max_new_tokens=16)
            route = "edge" if result.offloaded else "cognitive"
            if route == "cognitive":
                continue
        else:
            auto.generate(
                Tenant.of(capsule),
                [item.task.prompt],
                SamplingOptions(max_new_tokens=16),
                cancelled=threading.Event(),
            )
            route = "cognitive"
        out[route].append((time.perf_counter() - started) * 1000)
    return out


def over_passes(values: list[float]) -> tuple[float, float, float]:
    """A figure's median over the throughput passes and its bootstrap interval; after a
    single pass (`--repeats 1`) that pass's figure, with no interval to draw."""
    if len(values) > 1:
        return bootstrap_median(values)
    return values[0], values[0], values[0]


def tree_cpu_seconds() -> tuple[float, float]:
    """(this process's CPU seconds, its live child processes' CPU seconds): the context layer
    learns in a process of its own, whose CPU a request costs as much as the server's."""
    me = psutil.Process()
    own = me.cpu_times()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        children += times.user + times.system
    return own.user + own.system, children


def engine_cpu_seconds() -> float:
    """CPU seconds of this process's serving-engine threads (`engine-<replica>`): the tiers'
    forwards and the batching around them, read per thread, so other threads' load does not
    count."""
    ids = {t.native_id for t in threading.enumerate() if t.name.startswith("engine-")}
    return sum(t.user_time + t.system_time for t in psutil.Process().threads() if t.id in ids)


def loop_pass(
    stack: Stack, items: list[WorkItem], run_id: str, workers: int
) -> tuple[float, float, dict[str, list[float]]]:
    """(requests/s served, requests/s with the learning they queued drained, ms per request
    by route) of the workload through the loop."""
    orchestrator = Orchestrator(stack.parts, run_id=run_id)
    queries = stack.context.query_vectors if stack.context is not None else None
    before = queries.stats() if queries is not None else None
    cpu = tree_cpu_seconds()
    engines = engine_cpu_seconds()
    # The process's threads' voluntary switches (the kernel's sum over every thread, ended
    # ones included): each is a thread that blocked, most of them hand-offs between threads.
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    started = time.perf_counter()
    results, _ = serve_workload(orchestrator, items, workers=workers)
    seconds = time.perf_counter() - started
    drain_learning(stack)  # what the serving left queued: the rate with it drained too
    drained = time.perf_counter() - started
    spent = tree_cpu_seconds()
    CPU_MS.append((sum(spent) - sum(cpu)) * 1000 / len(results))
    CHILD_CPU_MS.append((spent[1] - cpu[1]) * 1000 / len(results))
    ENGINE_CPU_MS.append((engine_cpu_seconds() - engines) * 1000 / len(results))
    SWITCHES.append((resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches) / len(results))
    if queries is not None and before is not None:
        after = queries.stats()
        QUERY_EMBEDS.append((after["misses"] - before["misses"], after["calls"] - before["calls"]))
    by_route: dict[str, list[float]] = {}
    for r in results:
        by_route.setdefault(r.route, []).append(r.latency_ms)
    return len(results) / seconds, len(results) / drained, by_route


def federated_pass(
    settings: Settings, items: list[WorkItem], run_id: str, workers: int
) -> tuple[float, float, dict[str, list[float]]]:
    from trifecta.federation.processes import down, seed_registry, up
    from trifecta.fleet.topology import load_topology

    seed_registry(settings)
    topology = load_topology(settings.topology)
    federation = up(settings, topology)
    stack = Stack(settings=settings, remote=federation.bridge(topology))
    try:
        return loop_pass(stack, items, run_id, workers)
    finally:
        stack.close()
        down(settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--no-federated", action="store_true")
    args = parser.parse_args()
    load_at_start = machine_load()  # other jobs come and go: the section gives both ends
    configure_logging("ERROR")
    logging.disable(logging.WARNING)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
        stack = Stack(settings=settings)
        stack.warm_up()
        capsules = stack.capsules.all()
        try:
            with console.status("the layers called directly"):
                items = build_workload(capsules, args.requests, seed=100)
                direct = direct_calls(stack, items)
            with console.status("through the loop, one request at a time"):
                items = build_workload(capsules, args.requests, seed=150)
                _, _, one_at_a_time = loop_pass(stack, items, "loop-latency", 1)
            CPU_MS.clear()  # the throughput passes' own
            CHILD_CPU_MS.clear()
            ENGINE_CPU_MS.clear()
            QUERY_EMBEDS.clear()
            SWITCHES.clear()
            rates: list[float] = []
            with_learning: list[float] = []
            routes: dict[str, list[float]] = {}
            for repeat in range(args.repeats):
                with console.status(f"through the loop, pass {repeat + 1}/{args.repeats}"):
                    items = build_workload(capsules, args.requests, seed=200 + repeat)
                    rate, drained, by_route = loop_pass(
                        stack, items, f"loop-{repeat}", args.workers
                    )
                rates.append(rate)
                with_learning.append(drained)
                for route, values in by_route.items():
                    routes.setdefault(route, []).extend(values)
            cpu_ms, child_ms, engine_ms = list(CPU_MS), list(CHILD_CPU_MS), list(ENGINE_CPU_MS)
        finally:
            stack.close()
        federated: tuple[float, float, dict[str, list[float]]] | None = None
        if not args.no_federated:
            with console.status("through environment servers (trifecta up)"):
                items = build_workload(capsules, args.requests, seed=200)
                federated = federated_pass(settings, items, "loop-federated", args.workers)

    rate, rate_lo, rate_hi = over_passes(rates)
    learnt = over_passes(with_learning)
    edge_ratio = bootstrap_ratio(one_at_a_time.get("edge", [np.nan]), direct["edge"])
    goals = [
        Goal(
            claim="`trifecta run` throughput (in-process, learning on), requests/s",
            figure=rate,
            low=rate_lo,
            high=rate_hi,
            goal=THROUGHPUT_GOAL,
            direction="at least",
            note=f"10x the {BEFORE_RPS:g} requests/s before",
        ),
        Goal(
            claim="edge route p50 through the loop / direct edge call p50 (one at a time)",
            figure=edge_ratio[0],
            low=edge_ratio[1],
            high=edge_ratio[2],
            goal=EDGE_RATIO_GOAL,
            direction="at most",
            unit="x",
        ),
    ]
    table = Table(title="The loop against its layers (ms per request, p50 [95% interval])")
    columns = (
        "route",
        "layer directly",
        "loop, one at a time",
        f"loop, {args.workers} at once",
        "federated",
        "federated - loop",
    )
    for col in columns:
        table.add_column(col, justify="right")
    rows = []
    for route in ("edge", "cognitive", "cache"):
        d = bootstrap_median(direct[route]) if direct.get(route) else None
        one = bootstrap_median(one_at_a_time[route]) if one_at_a_time.get(route) else None
        loop = bootstrap_median(routes[route]) if routes.get(route) else None
        fed = (
            bootstrap_median(federated[2][route]) if federated and federated[2].get(route) else None
        )
        gap = fed[0] - loop[0] if fed is not None and loop is not None else None
        cells = [
            "-" if v is None else f"{v[0]:.1f} [{v[1]:.1f}, {v[2]:.1f}]"
            for v in (d, one, loop, fed)
        ] + ["-" if gap is None else f"{gap:+.1f}"]
        table.add_row(route, *cells)
        rows.append(f"| {route} | " + " | ".join(cells) + " |")
    console.print(table)
    fed_line = (
        f"federated throughput {federated[0]:.1f} requests/s (one pass)"
        if federated
        else "federated run skipped"
    )
    cpu, child, engine = over_passes(cpu_ms), over_passes(child_ms), over_passes(engine_ms)
    switched = over_passes(SWITCHES)
    cpu_line = (
        f"CPU {cpu[0]:.1f} ms a request [{cpu[1]:.1f}, {cpu[2]:.1f}] over the passes and their "
        f"drains, the context learner's process's {child[0]:.1f} [{child[1]:.1f}, "
        f"{child[2]:.1f}] of it and the serving engines' threads' {engine[0]:.1f} "
        f"[{engine[1]:.1f}, {engine[2]:.1f}] (2 cores at 180 requests/s allow 11); "
        f"{switched[0]:.1f} voluntary context switches a request [{switched[1]:.1f}, "
        f"{switched[2]:.1f}] over the passes and their drains, every thread"
    )
    misses, calls = (sum(x) for x in zip(*QUERY_EMBEDS, strict=True)) if QUERY_EMBEDS else (0, 0)
    batch_line = (
        f"query embeddings in the throughput passes: {misses} cache misses in {calls} encoder "
        f"calls ({misses / max(calls, 1):.1f} queries a call)"
    )
    drained_line = (
        f"{learnt[0]:.1f} requests/s [{learnt[1]:.1f}, {learnt[2]:.1f}] counting the time to "
        "drain the learning the pass queued"
    )
    console.print(
        f"in-process throughput {rate:.1f} requests/s [{rate_lo:.1f}, {rate_hi:.1f}] over "
        f"{args.repeats} passes ({drained_line}); {fed_line}; {cpu_line}; {batch_line}"
    )
    for g in goals:
        console.print(
            f"{g.claim}: {g.figure:.2f} {g.interval()} (goal {g.direction} {g.goal:g}): {g.verdict()}"
        )
    command = (
        f".venv/bin/python benchmarks/loop.py --requests {args.requests} --repeats {args.repeats}"
        f" --workers {args.workers}" + (" --no-federated" if args.no_federated else "")
    )
    write_results("loop", command, goals)
    write_section(
        "loop",
        "\n".join(
            [
                "## The request path (`benchmarks/loop.py`)",
                "",
                f"Command: `{command}`. Machine: {cpu_name()}; {load_at_start} at the start, "
                f"{machine_load()} at the end. "
                "Baseline in the same run: every task of the workload handed straight to its "
                "layer, one at a time (the edge mesh's offload for light tasks, the serving "
                "layer's cascade otherwise). Then the same kind of workload (the shipped "
                "fleet's mix, new seeds) through the loop one request at a time (the latency "
                "pass, like for like with the direct calls: the edge ratio is read there), "
                f"then as `trifecta run` serves it ({args.workers} requests at once, learning "
                "on, queued and drained; latency there is mostly queueing behind the other "
                "requests, by Little's law), and through environment servers started by "
                "`trifecta up` on loopback (HTTP between the front door and each environment). "
                "The machine is shared with other engineers' jobs: figures move with the load.",
                "",
                "| route | " + " | ".join(columns[1:]) + " |",
                "|---|---:|---:|---:|---:|---:|",
                *rows,
                "",
                f"In-process throughput {rate:.1f} requests/s [{rate_lo:.1f}, {rate_hi:.1f}] "
                f"(median of {args.repeats} passes, bootstrap interval; {drained_line}); "
                f"{fed_line}. In process: {cpu_line}; {batch_line}.",
                "",
                f"At {cpu[0]:.1f} ms of CPU a request two fully used cores serve at most "
                f"{2000 / cpu[0]:.0f} requests/s: the goal of 180 needs 11 ms or less, whatever "
                "the pipeline's shape.",
                "",
                PROFILE_NOTE,
                "",
                *budget_rows(cpu[0]),
                "",
                CPU_NOTE,
                "",
                *goals_markdown(goals),
            ]
        ),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
