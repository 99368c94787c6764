"""Serving benchmark: continuous batching against one request at a time, and fair queuing
against FIFO when one capsule floods the tier.

    .venv/bin/python benchmarks/serving.py [--quick]

1. Throughput and latency under 1, 4 and 16 concurrent clients (closed loop: each client sends
   its next request when the last one returns), through the whole tier (fair queue, router,
   replica): the continuous-batching replica (16 slots) against the same replica taking one
   request at a time. Goal: at least 3x the tokens/s at 16 clients.
2. Noisy neighbour (open loop, Poisson arrivals): four quiet capsules, then the same four
   beside a noisy capsule sending 10x each one's rate, first with weighted fair queuing and
   then with plain FIFO. Goal: the quiet capsules' p99 latency with fair queuing within 1.5x
   of their p99 when the noisy capsule is absent.

The model is the `small` tier's architecture with seeded dummy weights, and every request runs
to its `max_tokens` (what vLLM's serving benchmarks do with `--load-format dummy` and
`ignore_eos`), so that both sides decode exactly the same number of tokens.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks._report import write_section
from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.factory import build_engines, set_torch_threads
from trifecta.cognitive.serving.fair_queue import FairQueue, FifoQueue
from trifecta.cognitive.serving.model_source import ModelSource
from trifecta.cognitive.serving.pool import LocalReplicas, TierPool
from trifecta.cognitive.serving.requests import (
    CollectingSink,
    Completion,
    EngineRequest,
    GeneratedToken,
    SamplingParams,
)
from trifecta.cognitive.serving.slot_shares import SlotShares
from trifecta.core.errors import QuotaExceeded
from trifecta.core.heap import freeze_startup_heap
from trifecta.core.tasks import ALPHABET

MAX_BATCH = 16
CLIENTS = (1, 4, 16)
QUIET_CAPSULES = 4
NOISY_FACTOR = 10
QUIET_LOAD = 0.3  # the quiet capsules together use this share of the tier's capacity
console = Console()


@dataclass
class Sample:
    capsule: str
    latency_s: float
    tokens: int


def make_pool(
    model: Any, codec: TokenCodec, *, max_batch: int, fifo: bool = False, slot_shares: bool = True
) -> TierPool:
    engines = build_engines(model, codec, tier="small", replicas=1, max_batch=max_batch)
    return TierPool(
        "small",
        LocalReplicas(engines, queue_depth=0),
        codec,
        context_length=engines[0].context_length,
        queue=FifoQueue() if fifo else FairQueue(),
        slot_shares=SlotShares() if slot_shares else None,
    )


class Timed(CollectingSink):
    def __init__(self, capsule: str, samples: list[Sample], lock: threading.Lock):
        super().__init__()
        self.capsule, self.samples, self.lock = capsule, samples, lock
        self.start = time.perf_counter()

    def tokens(self, generated: Sequence[GeneratedToken]) -> None:
        """Dropped, as a streaming client's are once sent: the load generator runs in the
        server's process, and keeping every token of every request alive until the end would
        hand the server's garbage collector hundreds of thousands of objects to scan."""

    def finish(self, completion: Completion) -> None:
        with self.lock:
            self.samples.append(
                Sample(self.capsule, time.perf_counter() - self.start, completion.completion_tokens)
            )
        super().finish(completion)


def prompt(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(10, 24)))


def closed_loop(
    pool: TierPool, clients: int, requests_each: int, max_tokens: int
) -> tuple[float, list[Sample]]:
    """`clients` threads, each sending `requests_each` requests one after the other."""
    samples: list[Sample] = []
    lock = threading.Lock()
    params = SamplingParams(max_new_tokens=max_tokens, ignore_eos=True)

    def client(index: int) -> None:
        rng = random.Random(index)
        for _ in range(requests_each):
            sink = Timed(f"c{index}", samples, lock)
            pool.submit(
                EngineRequest(pool.codec.encode(prompt(rng)), params, sink, capsule=f"c{index}")
            )
            sink.wait(timeout=600)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return sum(s.tokens for s in samples) / elapsed, samples


def open_loop(
    pool: TierPool, rates: dict[str, float], duration_s: float, max_tokens: int
) -> tuple[list[Sample], int]:
    """Poisson arrivals per capsule at `rates` (requests/s) for `duration_s`; waits for all.
    Returns the samples and how many requests were refused (429: a capsule's backlog full)."""
    samples: list[Sample] = []
    lock = threading.Lock()
    params = SamplingParams(max_new_tokens=max_tokens, ignore_eos=True)
    arrivals = []
    for index, (capsule, rate) in enumerate(rates.items()):
        rng, t = random.Random(100 + index), 0.0
        while True:
            t += rng.expovariate(rate)
            if t > duration_s:
                break
            arrivals.append((t, capsule, prompt(rng)))
    arrivals.sort()
    sinks = []
    refused = 0
    start = time.perf_counter()
    for at, capsule, text in arrivals:
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sink = Timed(capsule, samples, lock)
        try:
            pool.submit(EngineRequest(pool.codec.encode(text), params, sink, capsule=capsule))
        except QuotaExceeded:
            refused += 1
            continue
        sinks.append(sink)
    for sink in sinks:
        sink.wait(timeout=600)
    return samples, refused


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    parser.add_argument("--rounds", type=int, default=2, help="noisy-neighbour rounds to pool")
    args = parser.parse_args()
    set_torch_threads(1)
    requests_each = 4 if args.quick else 12
    duration = 6.0 if args.quick else 20.0
    rounds = 1 if args.quick else args.rounds
    max_tokens = 32
    model, tokenizer = ModelSource(kind="dummy", tier="small").load()
    codec = TokenCodec(tokenizer)
    freeze_startup_heap()  # as `trifecta cognitive serve` does once it is loaded

    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("closed-loop clients", total=2 * len(CLIENTS))
        for clients in CLIENTS:
            result = {}
            for mode, batch in (("batching", MAX_BATCH), ("one at a time", 1)):
                pool = make_pool(model, codec, max_batch=batch)
                try:
                    tps, samples = closed_loop(pool, clients, requests_each, max_tokens)
                finally:
                    pool.close()
                latencies = [s.latency_s for s in samples]
                result[mode] = (tps, percentile(latencies, 50), percentile(latencies, 99))
                progress.advance(task)
            rows.append((clients, result))

    capacity_tps = rows[-1][1]["batching"][0]  # tokens/s of the batching tier at 16 clients
    per_request = max_tokens
    quiet_rate = QUIET_LOAD * capacity_tps / per_request / QUIET_CAPSULES
    quiet = {f"quiet-{i}": quiet_rate for i in range(QUIET_CAPSULES)}
    noisy = {**quiet, "noisy": NOISY_FACTOR * quiet_rate}
    scenarios = [  # name, offered rates, FIFO instead of fair queuing, slot shares
        ("alone", quiet, False, True),
        ("fair", noisy, False, True),
        ("order", noisy, False, False),
        ("fifo", noisy, True, False),
    ]
    # Scenarios take turns, round after round, and each one's samples are pooled: a stall of
    # the machine during one run then weighs on one round of one scenario, not on a verdict.
    pooled: dict[str, list[Sample]] = {name: [] for name, *_ in scenarios}
    elapsed_s = dict.fromkeys(pooled, 0.0)
    refusals = dict.fromkeys(pooled, 0)
    round_p99: dict[str, list[float]] = {name: [] for name in pooled}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("noisy neighbour", total=rounds * len(scenarios))
        for _ in range(rounds):
            for name, rates, fifo, shares in scenarios:
                pool = make_pool(model, codec, max_batch=MAX_BATCH, fifo=fifo, slot_shares=shares)
                start = time.perf_counter()
                try:
                    samples, refused = open_loop(pool, rates, duration, max_tokens)
                finally:
                    pool.close()
                elapsed_s[name] += time.perf_counter() - start
                refusals[name] += refused
                pooled[name] += samples
                round_p99[name].append(
                    percentile([s.latency_s for s in samples if s.capsule.startswith("quiet")], 99)
                )
                progress.advance(task)
    p99 = {}
    for name, samples in pooled.items():
        quiet_latencies = [s.latency_s for s in samples if s.capsule.startswith("quiet")]
        noisy_tps = sum(s.tokens for s in samples if s.capsule == "noisy") / elapsed_s[name]
        p99[name] = (
            percentile(quiet_latencies, 99),
            statistics.median(quiet_latencies),
            len(quiet_latencies),
            noisy_tps,
            refusals[name],
        )
    rounds_fair = [f / a for f, a in zip(round_p99["fair"], round_p99["alone"], strict=True)]

    report(rows, p99, rounds_fair, quiet_rate, max_tokens, args.quick)


def report(
    rows: list[tuple[int, dict[str, tuple[float, float, float]]]],
    p99: dict[str, tuple[float, float, int, float, int]],
    rounds_fair: list[float],
    quiet_rate: float,
    max_tokens: int,
    quick: bool,
) -> None:
    table = Table(title="continuous batching vs one request at a time")
    for column in (
        "clients",
        "batching tok/s",
        "p50 s",
        "p99 s",
        "one-at-a-time tok/s",
        "p50 s",
        "p99 s",
        "speed-up",
    ):
        table.add_column(column, justify="right")
    lines = [
        "| clients | batching tok/s | p50 s | p99 s | one-at-a-time tok/s | p50 s | p99 s "
        "| ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients, result in rows:
        b, s = result["batching"], result["one at a time"]
        cells = [
            str(clients),
            f"{b[0]:.0f}",
            f"{b[1]:.3f}",
            f"{b[2]:.3f}",
            f"{s[0]:.0f}",
            f"{s[1]:.3f}",
            f"{s[2]:.3f}",
            f"{b[0] / s[0]:.2f}x",
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    speedup = rows[-1][1]["batching"][0] / rows[-1][1]["one at a time"][0]
    fair_ratio = p99["fair"][0] / p99["alone"][0]
    fifo_ratio = p99["fifo"][0] / p99["alone"][0]
    noisy_lines = [
        "| scheduling | quiet p99 s | quiet p50 s | quiet requests | quiet p99 vs alone | "
        "noisy tok/s | noisy 429s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("alone", "noisy capsule absent"),
        ("fair", "noisy 10x: fair queuing + slot shares (default)"),
        ("order", "noisy 10x: fair queuing order only"),
        ("fifo", "noisy 10x: plain FIFO"),
    ):
        p, m, n, noisy_tps, refused = p99[name]
        noisy_lines.append(
            f"| {label} | {p:.3f} | {m:.3f} | {n} | {p / p99['alone'][0]:.2f}x | "
            f"{noisy_tps:.0f} | {refused} |"
        )
    console.print("\n".join(noisy_lines))
    verdict_batch = "met" if speedup >= 3 else "NOT met"
    verdict_fair = "met" if fair_ratio <= 1.5 else "NOT met"
    console.print(
        f"16 clients: {speedup:.2f}x tokens/s (goal 3x: {verdict_batch}); quiet p99 with fair "
        f"queuing {fair_ratio:.2f}x alone (goal 1.5x: {verdict_fair}), FIFO {fifo_ratio:.2f}x"
    )
    if quick:
        return
    write_section(
        "serving",
        "\n".join(
            [
                "## Serving: continuous batching and fair queuing (`benchmarks/serving.py`)",
                "",
                "Command: `.venv/bin/python benchmarks/serving.py`. Model: the `small` tier's "
                f"architecture (dummy weights; every request runs to {max_tokens} tokens), one replica "
                f"of {MAX_BATCH} slots, torch on one intra-op thread. The ratios carry the claims; "
                "absolute figures move with other load on the machine.",
                "",
                "Closed loop: each client sends its next request when the last one returns. Baseline: "
                "the same replica taking one request at a time.",
                "",
                *lines,
                "",
                f"At 16 clients: **{speedup:.2f}x** the tokens/s of one request at a time (goal: 3x, "
                f"{verdict_batch}).",
                "",
                f"Noisy neighbour (open loop, Poisson arrivals): {QUIET_CAPSULES} quiet capsules at "
                f"{quiet_rate:.2f} requests/s each ({QUIET_LOAD:.0%} of the tier's measured capacity "
                f"together), then beside a noisy capsule at {NOISY_FACTOR}x that rate (the tier "
                "overloaded). Baseline: plain FIFO in the same run. Latency: arrival to last token "
                "(the load generator counts each request's tokens and drops them, as a streaming "
                "client's are once sent).",
                "",
                *noisy_lines,
                "",
                f"Quiet capsules' p99 with fair queuing: **{fair_ratio:.2f}x** their p99 without the "
                f"noisy capsule (goal: at most 1.5x, {verdict_fair}); with FIFO: {fifo_ratio:.2f}x. "
                f"Medians: {p99['fair'][1] / p99['alone'][1]:.2f}x with fair queuing, "
                f"{p99['fifo'][1] / p99['alone'][1]:.2f}x with FIFO. Each scenario ran "
                f"{len(rounds_fair)} times, taking turns, and its samples are pooled; the fair/alone "
                f"p99 ratio of each round: {', '.join(f'{r:.2f}x' for r in rounds_fair)}. The "
                "process freezes its start-up heap (`gc.freeze()`, as the serve commands do): "
                "before that, full garbage collections of 250-400 ms set the p99 of every run.",
            ]
        ),
    )


if __name__ == "__main__":
    main()
