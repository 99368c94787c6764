"""Orchestration overhead per request: the trifecta loop against calling the layer directly.

Each task is served twice, alternately, in one process on one stack: once by calling the
layer itself (the cognitive cascade, or the edge mesh for light tasks), and once through
`Orchestrator.serve` (quota, shard placement, context retrieval, routing rules, response
cache, the layer through the mock bridge, the verifier, learning, the request log and the
cost ledger). The orchestrator records the time of every layer hop (context retrieve, the
layer, context learn); its own overhead is the end-to-end time minus those hops.

Claim checked (exit code 1 if it fails): orchestration overhead under 2 ms at p50.

    .venv/bin/python benchmarks/overhead.py [--requests 200]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks._report import write_section
from trifecta.core.logging import configure_logging
from trifecta.core.settings import Settings
from trifecta.core.tasks import generate_tasks
from trifecta.fleet.capsules import Capsule
from trifecta.orchestrator.loop import Orchestrator
from trifecta.orchestrator.models import TaskRequest
from trifecta.orchestrator.stack import Stack

GOAL_MS = 2.0
LAYER_HOPS = ("context", "cognitive", "edge")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="tasks per route")
    args = parser.parse_args()
    configure_logging("ERROR")
    logging.disable(logging.WARNING)
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'control.db'}")
        capsule = Capsule(id="bench", name="bench", kind="digital_twin", domain="bench")
        stack = Stack(settings=settings, capsules=[capsule])
        stack.warm_up()
        orchestrator = Orchestrator(stack.parts, run_id="overhead")
        mesh = next(iter(stack.meshes.values()))
        rows: dict[str, dict[str, list[float]]] = {}
        try:
            with Progress(console=console, transient=True) as progress:
                for route, grades in (("cognitive", [3, 4, 5]), ("edge", [1, 2])):
                    tasks = generate_tasks(
                        args.requests, seed=17, split="heldout", difficulties=grades, domain="bench"
                    )
                    prompts = list(dict.fromkeys(t.prompt for t in tasks))
                    job = progress.add_task(f"{route}: {len(prompts)} tasks", total=len(prompts))
                    cell = rows.setdefault(
                        route, {"direct": [], "e2e": [], "layers": [], "overhead": []}
                    )
                    for prompt in prompts:
                        started = time.perf_counter()
                        if route == "cognitive":
                            stack.cognitive.complete(capsule.id, prompt, max_new_tokens=8)
                        else:
                            mesh.offload(capsule, [prompt], max_new_tokens=8)
                        cell["direct"].append((time.perf_counter() - started) * 1000)
                        started = time.perf_counter()
                        result = orchestrator.serve(capsule.id, TaskRequest(prompt=prompt))
                        e2e = (time.perf_counter() - started) * 1000
                        layers = sum(h.latency_ms for h in result.hops if h.layer in LAYER_HOPS)
                        cell["e2e"].append(e2e)
                        cell["layers"].append(layers)
                        cell["overhead"].append(e2e - layers)
                        progress.advance(job)
        finally:
            stack.close()

    table = Table(title="Orchestration overhead per request (ms)")
    for col in (
        "route",
        "n",
        "layer called directly p50",
        "through the loop p50",
        "layer hops inside p50",
        "overhead p50",
        "overhead p99",
    ):
        table.add_column(col, justify="right")
    ok = True
    lines = []
    for route, cell in rows.items():
        overhead50 = pct(cell["overhead"], 50)
        ok &= overhead50 < GOAL_MS
        values = (
            len(cell["e2e"]),
            pct(cell["direct"], 50),
            pct(cell["e2e"], 50),
            pct(cell["layers"], 50),
            overhead50,
            pct(cell["overhead"], 99),
        )
        table.add_row(route, str(values[0]), *(f"{v:.2f}" for v in values[1:]))
        lines.append(
            f"| {route} | {values[0]} | " + " | ".join(f"{v:.2f}" for v in values[1:]) + " |"
        )
    console.print(table)
    verdict = "met" if ok else "NOT met"
    console.print(f"goal: overhead p50 under {GOAL_MS} ms on every route: {verdict}")
    write_section(
        "overhead",
        "\n".join(
            [
                "## Orchestration overhead (`benchmarks/overhead.py`)",
                "",
                "Command: `.venv/bin/python benchmarks/overhead.py --requests "
                f"{args.requests}`. Baseline in the same run: the layer called directly "
                "(the cascade, "
                "or the edge mesh) on the same tasks, alternating with the full loop. The loop's "
                "overhead is its end-to-end time minus the layer hops it timed "
                "(context retrieve, the "
                "layer through the mock bridge, context learn): quota, shard placement, routing "
                "rules, response-cache lookup, verifier, request log and cost ledger writes, metrics.",
                "",
                "| route | tasks | layer directly p50 ms | through the loop p50 ms | layer hops inside "
                "p50 ms | overhead p50 ms | overhead p99 ms |",
                "|---|---:|---:|---:|---:|---:|---:|",
                *lines,
                "",
                f"Goal: overhead under {GOAL_MS} ms at p50 on every route: **{verdict}**.",
            ]
        ),
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
