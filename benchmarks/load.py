"""Load: `trifecta serve` on loopback under locust at a stated rate for a stated time.

Mixed capsules of the shipped fleet (digital twins, research, EU sovereign), each with its
own API key, send tasks on a fixed schedule (every fourth acknowledged task also gets the
client's feedback). Reported: 5xx and dropped responses, the count audit (every
acknowledged task, learning write and feedback is in the database after the learning worker
drained), the achieved rate against the offered one, and p50 / p99 from each request's
scheduled arrival (a server that falls behind is charged for the wait it causes).

The baseline is the same harness at the same rate against the same server's `/healthz` (no
work behind it): the latency floor of locust, loopback HTTP and uvicorn on this machine, so
the task figures are not the load generator's own.

    .venv/bin/python benchmarks/load.py --rate 3 --seconds 60
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rich.console import Console
from tests.reliability.load import LoadRun, run_locust
from tests.reliability.servers import ServeProcess
from tests.reliability.traffic import CAPSULES, drained_audit

from benchmarks._report import (
    Goal,
    bootstrap_statistic,
    cpu_name,
    goals_markdown,
    machine_load,
    p99,
    write_results,
    write_section,
)

HEADING = "## Load: `trifecta serve` under locust, nothing acknowledged lost"


WINDOW_S = 5


def rate_ratio(run: LoadRun, offered: float) -> tuple[float, float, float]:
    """Achieved / offered task rate, with a 95% bootstrap interval over five-second windows
    of completions (the first and last windows are ramp-up and cut-off)."""
    done = np.array([r.done for r in run.of("task")])
    start = min(r.scheduled for r in run.of("task"))
    per_window = np.bincount(((done - start) // WINDOW_S).astype(int))[1:-1] / WINDOW_S
    mean, low, high = bootstrap_statistic(per_window, np.mean)
    return mean / offered, low / offered, high / offered


def percentiles(samples: np.ndarray) -> dict[str, tuple[float, float, float]]:
    return {
        "p50": bootstrap_statistic(samples, np.median),
        "p99": bootstrap_statistic(samples, p99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=3.0, help="tasks per second offered")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--users", type=int, default=8, help="locust users (capsules in turn)")
    args = parser.parse_args()
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="trifecta-load-"))
    url = f"sqlite:///{work / 'control.db'}"
    server = ServeProcess(work / "data", url)
    console.print(f"starting trifecta serve ({work})")
    server.start()
    try:
        keys = server.capsule_keys(CAPSULES)
        console.print(f"tasks: {args.rate:g}/s for {args.seconds:g} s, {args.users} users")
        tasks = run_locust(
            server.url, keys, rate=args.rate, seconds=args.seconds, users=args.users, work=work
        )
        load = machine_load()
        console.print("baseline: /healthz at the same rate")
        floor = run_locust(
            server.url,
            keys,
            rate=args.rate,
            seconds=min(args.seconds, 30),
            users=args.users,
            work=work,
            path="healthz",
        )
        console.print("draining the learning queue and auditing the database")
        audit = drained_audit(url, tasks.acks)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    task_ms, floor_ms = tasks.latencies_ms(), floor.latencies_ms("healthz")
    ours, base = percentiles(task_ms), percentiles(floor_ms)
    ratio = rate_ratio(tasks, args.rate)
    lost = (
        len(audit.missing_tasks)
        + len(audit.missing_learning)
        + len(audit.unlearned)
        + len(audit.missing_feedback)
    )
    goal_list = [
        Goal.of("5xx or dropped responses under load", tasks.server_errors(), at_most=0),
        Goal.of("acknowledged writes missing after the drain", lost, at_most=0),
        Goal.of(f"achieved / offered task rate at {args.rate:g}/s", ratio, at_least=0.95),
    ]
    command = (
        f".venv/bin/python benchmarks/load.py --rate {args.rate:g} --seconds {args.seconds:g} "
        f"--users {args.users}"
    )
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(tasks.acks.statuses.items()))
    slowest = sorted(tasks.of("task"), key=lambda r: r.done - r.scheduled)[-3:]

    def cell(figure: tuple[float, float, float]) -> str:
        return f"{figure[0]:.0f} [{figure[1]:.0f}, {figure[2]:.0f}]"

    body = [
        HEADING,
        "",
        f"`{command}`. CPU: {cpu_name()}; {load} during the task run (the machine is shared "
        "with other engineers' work: every figure moves with it).",
        "",
        "| requests | offered /s | achieved /s | p50 ms [95%] | p99 ms [95%] |",
        "|---|---:|---:|---:|---:|",
        f"| tasks (`POST /v1/capsules/{{id}}/tasks`) | {args.rate:g} | "
        f"{tasks.achieved_rate():.2f} | {cell(ours['p50'])} | {cell(ours['p99'])} |",
        f"| baseline: `/healthz`, same harness and rate | {args.rate:g} | "
        f"{floor.achieved_rate('healthz'):.2f} | {cell(base['p50'])} | {cell(base['p99'])} |",
        "",
        f"Answers: {statuses} (201 task, 200 feedback; 0 would be a dropped connection). "
        f"Audit after the drain: {len(tasks.acks.tasks)} acknowledged tasks all in the request "
        f"log, {len(tasks.acks.learned)} acknowledged learning writes = {audit.queue_rows} "
        f"learn-queue rows, {len(audit.unlearned)} still pending, "
        f"{len(tasks.acks.feedback)} acknowledged feedbacks, {len(audit.missing_feedback)} "
        "missing.",
        "",
        *goals_markdown(goal_list),
        "",
        "The three slowest tasks, where their time went (the server's own hop timings; hops can overlap: the retrieval runs beside the layer call):",
        "",
        *[f"- {r.breakdown()}" for r in reversed(slowest)],
        "",
        "Latency is completion minus the request's scheduled arrival (each user sends on a "
        "fixed schedule, `start + k / rate`), so queueing behind a slow answer counts. "
        "Intervals: 95% bootstrap over requests (percentiles) and over five-second windows "
        "(rate). The short CI version of this run is "
        "`tests/reliability/test_load_and_soak.py`; the guarantees and the tests that prove "
        "them are in RELIABILITY.md.",
    ]
    write_section("load", "\n".join(body))
    write_results("load", command, goal_list)
    for line in body[4:8]:
        console.print(line)
    for r in reversed(slowest):
        console.print("slow task:", r.breakdown())
    for g in goal_list:
        console.print(f"{g.claim}: {g.figure:.2f} {g.interval()} -> {g.verdict()}")


if __name__ == "__main__":
    main()
