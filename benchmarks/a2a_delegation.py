"""What delegating a capsule task over A2A costs, against a bare JSON POST to the same server.

    .venv/bin/python benchmarks/a2a_delegation.py [--rounds 6] [--requests 100]

One server process (uvicorn, loopback) serves an environment's A2A routes (agent card, JSON-RPC
with the SDK's request handler, task store and our executor) and, beside them, a bare
`POST /bare` route that validates the same `CapsuleTask` and calls the same handler. The
handler is the task family's exact solver (microseconds), so the figures are the protocols'
own cost. The client (this process, one event loop, one keep-alive httpx client) sends tasks
one at a time:

- bare: `httpx.post(/bare, json=task)` and `CapsuleTaskOutcome.model_validate` (the baseline a
  skeptic names: plain JSON RPC over HTTP, no task life cycle);
- a2a send: `Delegator.send` (sender's placement check, the SDK's `ClientFactory` client,
  JSON-RPC `SendMessage`, the receiver's check, the task's life cycle, the outcome artifact);
- a2a stream: `Delegator.stream` over SSE (`SendStreamingMessage`), to the terminal state.

Rounds alternate the order of the three. Figures: per-task latency medians with bootstrap
intervals, and each A2A path's ratio to bare. Goal: a blocking A2A delegation costs at most
5 ms more than the bare POST at the median (the loop's cognitive hop is tens of ms), and the
ratio is stated.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks._report import (
    Goal,
    bootstrap_difference,
    bootstrap_median,
    bootstrap_ratio,
    cpu_name,
    goals_markdown,
    machine_load,
    write_results,
    write_section,
)
from trifecta.core.errors import NotFound
from trifecta.core.tasks import generate_tasks, solve
from trifecta.federation.a2a.cards import build_agent_card
from trifecta.federation.a2a.client import Delegator
from trifecta.federation.a2a.models import CapsuleTask, CapsuleTaskOutcome
from trifecta.fleet.capsules import Capsule
from trifecta.fleet.topology import load_topology

CAPSULE = Capsule(id="bench-twin", name="Bench twin", kind="digital_twin", domain="bench")
ENVIRONMENT = "inference"
GOAL_EXTRA_MS = 5.0
console = Console()


def lookup(capsule_id: str) -> Capsule:
    if capsule_id != CAPSULE.id:
        raise NotFound(f"no capsule {capsule_id!r}", field="capsule_id")
    return CAPSULE


def handle(capsule_id: str, task: CapsuleTask) -> CapsuleTaskOutcome:
    return CapsuleTaskOutcome(answer=solve(task.prompt), environment=ENVIRONMENT, verified=True)


def serve(port: int) -> None:
    """The server process: A2A routes and the bare route, same handler."""
    import uvicorn
    from fastapi import FastAPI

    from trifecta.federation.a2a.server import add_a2a_routes

    app = FastAPI()
    card = build_agent_card(load_topology().environment(ENVIRONMENT), f"http://127.0.0.1:{port}")
    add_a2a_routes(app, card, handle, lookup)

    @app.post("/bare")
    def bare(task: CapsuleTask) -> CapsuleTaskOutcome:
        lookup(CAPSULE.id)
        return handle(CAPSULE.id, task)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def measure(url: str, rounds: int, requests: int) -> dict[str, list[float]]:
    prompts = [t.prompt for t in generate_tasks(requests, seed=5)]
    samples: dict[str, list[float]] = {"bare": [], "a2a send": [], "a2a stream": []}
    async with httpx.AsyncClient(timeout=30) as http, Delegator(lookup, http=http) as delegator:
        from a2a.client.card_resolver import A2ACardResolver

        card = await A2ACardResolver(http, url).get_agent_card()

        async def bare(task: CapsuleTask) -> str | None:
            response = await http.post(f"{url}/bare", json=task.model_dump(mode="json"))
            return CapsuleTaskOutcome.model_validate(response.json()).answer

        async def send(task: CapsuleTask) -> str | None:
            done = await delegator.send(card, CAPSULE.id, task)
            return done.outcome.answer if done.outcome else None

        async def stream(task: CapsuleTask) -> str | None:
            last = None
            async for update in delegator.stream(card, CAPSULE.id, task):
                last = update
            return last.outcome.answer if last and last.outcome else None

        paths = {"bare": bare, "a2a send": send, "a2a stream": stream}
        for prompt in prompts[:10]:  # warm the connection and the server's code paths
            for call in paths.values():
                await call(CapsuleTask(prompt=prompt))
        with Progress(console=console, transient=True) as progress:
            job = progress.add_task("rounds", total=rounds * len(paths) * requests)
            for round_ in range(rounds):
                order = list(paths.items())
                order = order[round_ % len(order) :] + order[: round_ % len(order)]
                for name, call in order:
                    for prompt in prompts:
                        started = time.perf_counter()
                        answer = await call(CapsuleTask(prompt=prompt))
                        samples[name].append((time.perf_counter() - started) * 1000)
                        if answer != solve(prompt):
                            raise RuntimeError(f"{name} answered {answer!r} to {prompt!r}")
                        progress.advance(job)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    from tests.support import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/.well-known/agent-card.json", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.2)
        samples = anyio.run(measure, url, args.rounds, args.requests)
    finally:
        server.terminate()
        server.wait(timeout=20)
    return report(samples, args)


def report(samples: dict[str, list[float]], args: argparse.Namespace) -> int:
    bare = samples["bare"]
    table = Table(title="per-task latency over loopback (ms)")
    for column in ("path", "tasks", "p50", "95% interval", "p99", "x bare (p50)"):
        table.add_column(column, justify="right")
    rows, goals = [], []
    for name, values in samples.items():
        median, low, high = bootstrap_median(values)
        ordered = sorted(values)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        ratio = bootstrap_ratio(values, bare) if name != "bare" else (1.0, 1.0, 1.0)
        cells = (
            f"{len(values)}",
            f"{median:.2f}",
            f"[{low:.2f}, {high:.2f}]",
            f"{p99:.2f}",
            f"{ratio[0]:.2f} [{ratio[1]:.2f}, {ratio[2]:.2f}]",
        )
        table.add_row(name, *cells)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    console.print(table)
    # The extra milliseconds of a blocking delegation: bootstrap of the median difference.
    import numpy as np

    goals.append(
        Goal.of(
            "A2A send: extra ms per task over a bare JSON POST (p50)",
            bootstrap_difference(samples["a2a send"], bare, statistic=np.median),
            at_most=GOAL_EXTRA_MS,
            unit=" ms",
        )
    )
    command = (
        f".venv/bin/python benchmarks/a2a_delegation.py --rounds {args.rounds} "
        f"--requests {args.requests}"
    )
    write_results("a2a_delegation", command, goals)
    write_section(
        "a2a_delegation",
        "\n".join(
            [
                "## A2A delegation (`benchmarks/a2a_delegation.py`)",
                "",
                f"Command: `{command}`. CPU: {cpu_name()}; {machine_load()} (the machine is "
                "shared with other engineers' jobs: absolute figures move, the ratios are "
                "measured in the same interleaved rounds). One server process on loopback, "
                "tasks sent one at a time by one client; the handler is the task family's exact "
                "solver, so the figures are the protocols' cost. Baseline: a bare JSON POST to "
                "the same server calling the same handler.",
                "",
                "| path | tasks | p50 ms | 95% interval | p99 ms | x bare (p50) |",
                "|---|---:|---:|---|---:|---|",
                *rows,
                "",
                *goals_markdown(goals),
            ]
        ),
    )
    verdict = goals[0].verdict()
    console.print(f"goal: {goals[0].claim} {goals[0].direction} {GOAL_EXTRA_MS} ms: {verdict}")
    return 0 if goals[0].met else 1


if __name__ == "__main__":
    sys.exit(main())
