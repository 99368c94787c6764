"""Serving benchmark: continuous batching against one request at a time, and fair queuing
against FIFO when one capsule floods the tier.

    .venv/bin/python benchmarks/serving.py [--quick]

1. Throughput and latency under 1, 4 and 16 concurrent clients (closed loop: each client sends
   its next request when the last one returns), through the whole tier (fair queue, router,
   replica): the continuous-batching replica (16 slots) against two baselines on the same
   replica, one request at a time, and static batching (requests gathered into a batch of up
   to 16 that runs until its longest request ends before the next batch starts, as
   `generate()` over a padded batch does). Requests ask for 8 to 56 tokens (seeded, the same
   sequence for every mode): with equal lengths static batching would lose nothing. Rounds of
   the three modes take turns. Goal: at least 3x the tokens/s of one at a time at 16 clients.
2. Noisy neighbour (open loop, Poisson arrivals): four quiet capsules, then the same four
   beside a noisy capsule sending 10x each one's rate, first with weighted fair queuing and
   then with plain FIFO. Latency runs from each request's *scheduled* arrival, so a load
   generator that falls behind does not hide the wait (no coordinated omission). Goal: the
   quiet capsules' p99 latency with fair queuing within 1.5x of their p99 when the noisy
   capsule is absent.

Both parts run in many short rounds, the modes (scenarios) of a round back to back in a
rotated order and on the same seeded requests, and every interval is over rounds: a stall of
the shared machine then lands in one round of one side, and the interval carries it.

The model is the `small` tier's architecture with seeded dummy weights, and every request runs
to its `max_tokens` (what vLLM's serving benchmarks do with `--load-format dummy` and
`ignore_eos`), so that every mode decodes exactly the same number of tokens.
"""

from __future__ import annotations

import argparse
import gc
import queue
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rich.console import Console
from rich.progress import Progress

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
LENGTHS = (8, 56)  # tokens per request in the closed loop, uniform (mean 32)
STATIC_WINDOW_S = 0.005  # static batching: how long a batch waits for more requests
MODES = ("continuous batching", "static batching", "one at a time")
DEFAULT_ROUNDS = 10
# The noisy neighbour's rounds: many short ones, since a stall of the shared machine lands in
# one round of one scenario and the p99 ratio's interval is over rounds (10 x 8 s read
# [0.73, 3.20] at load 1.6, the wide side from 2-3 rounds).
NOISY_ROUNDS = 16
NOISY_ROUND_S = 5.0  # each scenario's open-loop run per round (the full run)
console = Console()


@dataclass
class Sample:
    capsule: str
    latency_s: float
    tokens: int
    first_token_s: float  # from the request's start to its first token: queue, admission, prefill
    late_s: float = 0.0  # open loop: how far behind its scheduled arrival it was submitted
    ended_at: float = 0.0  # perf_counter() when it ended


class Collections:
    """The garbage collector's passes in this process (they hold the interpreter lock, so
    every thread waits): when each began, its generation, wall seconds, and CPU seconds of
    the thread that ran it."""

    def __init__(self) -> None:
        self.passes: list[tuple[float, int, float, float]] = []
        self._started = (0.0, 0.0)
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
        else:
            wall, cpu = self._started
            now = time.perf_counter()
            self.passes.append((wall, info["generation"], now - wall, time.thread_time() - cpu))

    def take(self) -> list[tuple[float, int, float, float]]:
        """The passes since the last call."""
        passes, self.passes = self.passes, []
        return passes


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


@dataclass
class ClosedRun:
    tokens_per_s: float
    tokens_per_cpu_s: (
        float  # tokens over the process's CPU seconds: what the shared load moves less
    )
    samples: list[Sample]
    forward_passes: int  # of the replica, prefills included
    step_fit: tuple[float, float] | None  # the replica's step time a + c * rows (s, s/row)


class Timed(CollectingSink):
    def __init__(
        self,
        capsule: str,
        samples: list[Sample],
        lock: threading.Lock,
        start: float | None = None,
    ):
        """`start`: when the request was due (open loop: its scheduled arrival); default now."""
        super().__init__()
        self.capsule, self.samples, self.lock = capsule, samples, lock
        self.start = time.perf_counter() if start is None else start
        self.first_token: float | None = None
        self.late_s = 0.0

    def tokens(self, generated: Sequence[GeneratedToken]) -> None:
        """Dropped, as a streaming client's are once sent: the load generator runs in the
        server's process, and keeping every token of every request alive until the end would
        hand the server's garbage collector hundreds of thousands of objects to scan. Only
        the first one's time is kept: what the request waited before it decoded."""
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def finish(self, completion: Completion) -> None:
        end = time.perf_counter()
        first = end if self.first_token is None else self.first_token
        with self.lock:
            self.samples.append(
                Sample(
                    self.capsule,
                    end - self.start,
                    completion.completion_tokens,
                    first - self.start,
                    self.late_s,
                    end,
                )
            )
        super().finish(completion)


def prompt(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(10, 24)))


class StaticBatcher:
    """The static-batching baseline in front of the same pool: requests wait for a batch
    (up to `size`, gathered for STATIC_WINDOW_S after the first), the batch is submitted at
    once, and the next batch starts only when every request of this one has ended."""

    def __init__(self, pool: TierPool, size: int):
        self.pool, self.size = pool, size
        self.waiting: queue.Queue[EngineRequest | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, request: EngineRequest) -> None:
        self.waiting.put(request)

    def close(self) -> None:
        self.waiting.put(None)
        self.thread.join(timeout=60)

    def _run(self) -> None:
        while (first := self.waiting.get()) is not None:
            batch = [first]
            deadline = time.perf_counter() + STATIC_WINDOW_S
            while len(batch) < self.size:
                try:
                    more = self.waiting.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if more is None:
                    self.waiting.put(None)
                    break
                batch.append(more)
            sinks = [request.sink for request in batch]
            for request in batch:
                self.pool.submit(request)
            for sink in sinks:
                assert isinstance(sink, CollectingSink)
                sink.finished(timeout=600)


def closed_loop(
    submit: Callable[[EngineRequest], None], codec: TokenCodec, clients: int, requests_each: int
) -> tuple[float, list[Sample]]:
    """`clients` threads, each sending `requests_each` requests one after the other, each
    asking for a seeded number of tokens in LENGTHS."""
    samples: list[Sample] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        rng = random.Random(index)
        for _ in range(requests_each):
            sink = Timed(f"c{index}", samples, lock)
            params = SamplingParams(max_new_tokens=rng.randint(*LENGTHS), ignore_eos=True)
            submit(EngineRequest(codec.encode(prompt(rng)), params, sink, capsule=f"c{index}"))
            sink.wait(timeout=600)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return sum(s.tokens for s in samples) / elapsed, samples


def run_mode(
    model: Any, codec: TokenCodec, mode: str, clients: int, requests_each: int
) -> ClosedRun:
    """One closed-loop run of `mode` on a fresh replica."""
    pool = make_pool(model, codec, max_batch=1 if mode == "one at a time" else MAX_BATCH)
    static = StaticBatcher(pool, MAX_BATCH) if mode == "static batching" else None
    try:
        cpu = time.process_time()
        rate, samples = closed_loop(
            static.submit if static else pool.submit, codec, clients, requests_each
        )
        per_cpu = sum(s.tokens for s in samples) / (time.process_time() - cpu)
        assert isinstance(pool.dispatcher, LocalReplicas)
        engines = list(pool.dispatcher.engines.values())
        steps = sum(engine.steps for engine in engines)
        return ClosedRun(rate, per_cpu, samples, steps, engines[0].step_times.fit())
    finally:
        if static:
            static.close()
        pool.close()


def open_loop(
    pool: TierPool, rates: dict[str, float], duration_s: float, max_tokens: int, seed: int = 0
) -> tuple[list[Sample], int]:
    """Poisson arrivals per capsule at `rates` (requests/s) for `duration_s`; waits for all.
    Each capsule's arrivals follow from `seed` and its place in `rates`, so the scenarios of a
    round replay the same quiet arrivals. Returns the samples and how many requests were
    refused (429: a capsule's backlog full)."""
    samples: list[Sample] = []
    lock = threading.Lock()
    params = SamplingParams(max_new_tokens=max_tokens, ignore_eos=True)
    arrivals = []
    for index, (capsule, rate) in enumerate(rates.items()):
        rng, t = random.Random(1000 * seed + 100 + index), 0.0
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
        sink = Timed(capsule, samples, lock, start=start + at)  # from its scheduled arrival
        sink.late_s = time.perf_counter() - sink.start
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
    parser.add_argument(
        "--rounds", type=int, default=DEFAULT_ROUNDS, help="rounds of the closed-loop modes"
    )
    parser.add_argument(
        "--noisy-rounds", type=int, default=NOISY_ROUNDS, help="rounds of the noisy scenarios"
    )
    args = parser.parse_args()
    set_torch_threads(1)
    requests_each = 4 if args.quick else 12
    duration = 3.0 if args.quick else NOISY_ROUND_S
    rounds = 1 if args.quick else args.rounds
    noisy_rounds = 1 if args.quick else args.noisy_rounds
    max_tokens = 32
    model, tokenizer = ModelSource(kind="dummy", tier="small").load()
    codec = TokenCodec(tokenizer)
    freeze_startup_heap()  # as `trifecta cognitive serve` does once it is loaded

    load_before = machine_load()
    # rounds[clients][mode] -> one run per round; the modes take turns
    closed: dict[int, dict[str, list[ClosedRun]]] = {c: {m: [] for m in MODES} for c in CLIENTS}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(
            "closed-loop clients", total=len(MODES) + rounds * len(MODES) * len(CLIENTS)
        )
        for mode in MODES:  # warm-up, discarded: torch's first calls of each shape are slow
            run_mode(model, codec, mode, CLIENTS[-1], 1)
            progress.advance(task)
        for index in range(rounds):
            # The modes take turns, each round in a rotated order: none always runs first.
            order = MODES[index % len(MODES) :] + MODES[: index % len(MODES)]
            for clients in CLIENTS:
                for mode in order:
                    closed[clients][mode].append(
                        run_mode(model, codec, mode, clients, requests_each)
                    )
                    progress.advance(task)

    # tokens/s of the batching tier at 16 clients
    capacity_tps = statistics.median(
        run.tokens_per_s for run in closed[CLIENTS[-1]]["continuous batching"]
    )
    per_request = max_tokens
    quiet_rate = QUIET_LOAD * capacity_tps / per_request / QUIET_CAPSULES
    quiet = {f"quiet-{i}": quiet_rate for i in range(QUIET_CAPSULES)}
    noisy = {**quiet, "noisy": NOISY_FACTOR * quiet_rate}
    scenarios: list[tuple[str, dict[str, float], bool, bool]] = [  # name, rates, FIFO, shares
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
    by_round: dict[str, list[list[float]]] = {name: [] for name in pooled}  # quiet latencies
    # the collector's passes while each scenario's quiet requests were in flight
    passes: dict[str, list[tuple[float, int, float, float]]] = {name: [] for name in pooled}
    collections = Collections()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("noisy neighbour", total=noisy_rounds * len(scenarios))
        for index in range(noisy_rounds):
            turn = scenarios[index % len(scenarios) :] + scenarios[: index % len(scenarios)]
            for name, rates, fifo, shares in turn:
                pool = make_pool(model, codec, max_batch=MAX_BATCH, fifo=fifo, slot_shares=shares)
                collections.take()
                start = time.perf_counter()
                try:
                    samples, refused = open_loop(pool, rates, duration, max_tokens, seed=index)
                finally:
                    pool.close()
                quiet_end = max(s.ended_at for s in samples if s.capsule.startswith("quiet"))
                passes[name] += [p for p in collections.take() if p[0] < quiet_end]
                # The results kept so far are the load generator's, not the server's: out of
                # the collector's way, as the server's start-up heap is (a run without this had
                # 4 full passes of about 21 ms of CPU each in its fair runs).
                freeze_startup_heap()
                elapsed_s[name] += time.perf_counter() - start
                refusals[name] += refused
                pooled[name] += samples
                by_round[name].append(_quiet(samples))
                round_p99[name].append(percentile(by_round[name][-1], 99))
                progress.advance(task)
    p99s = {}
    for name, samples in pooled.items():
        quiet_latencies = [s.latency_s for s in samples if s.capsule.startswith("quiet")]
        noisy_tps = sum(s.tokens for s in samples if s.capsule == "noisy") / elapsed_s[name]
        p99s[name] = (
            percentile(quiet_latencies, 99),
            statistics.median(quiet_latencies),
            len(quiet_latencies),
            noisy_tps,
            refusals[name],
        )
    rounds_fair = [f / a for f, a in zip(round_p99["fair"], round_p99["alone"], strict=True)]

    loads = (load_before, machine_load())
    fair = rounds_p99_ratio(by_round["fair"], by_round["alone"])
    report(
        closed,
        pooled,
        p99s,
        rounds_fair,
        fair,
        quiet_rate,
        max_tokens,
        loads,
        _stalls(pooled, passes),
        args.quick,
    )


def rounds_p99_ratio(
    numerator: list[list[float]], denominator: list[list[float]], resamples: int = 2000
) -> tuple[float, float, float]:
    """p99 of the pooled `numerator` rounds over that of the `denominator` rounds, and its 95%
    bootstrap interval over rounds: each resample draws round indices with replacement and
    pools both sides' samples of the same rounds (paired: they ran back to back). Requests of
    one round share its stalls, so resampling requests would understate the spread."""
    rng = np.random.default_rng(0)
    figure = p99(np.concatenate(numerator)) / p99(np.concatenate(denominator))
    ratios = []
    for _ in range(resamples):
        picked = rng.integers(0, len(numerator), len(numerator))
        ratios.append(
            p99(np.concatenate([numerator[i] for i in picked]))
            / p99(np.concatenate([denominator[i] for i in picked]))
        )
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(figure), float(low), float(high)


def _tail_wait(samples: list[Sample]) -> str:
    """Where the quiet tail spent its time: of the quiet requests at or beyond their p99, the
    median share of latency before the first token (queue, admission, prefill)."""
    quiet = [s for s in samples if s.capsule.startswith("quiet")]
    cut = percentile([s.latency_s for s in quiet], 99)
    tail = [s for s in quiet if s.latency_s >= cut]
    waited = statistics.median(s.first_token_s / s.latency_s for s in tail)
    return f"{waited:.0%} of {len(tail)} requests' latency"


def _stalls(
    pooled: dict[str, list[Sample]], passes: dict[str, list[tuple[float, int, float, float]]]
) -> str:
    """Two stalls every quiet request in flight shares, per scenario over all rounds: the
    garbage collector's passes (full ones, and the longest pause of any) while quiet requests
    were in flight, and how far behind schedule the load generator submitted them."""
    parts = []
    for name in ("alone", "fair", "fifo"):
        full = [p for p in passes[name] if p[1] == 2]
        longest = max((p[2] for p in passes[name]), default=0.0)
        late = percentile([s.late_s for s in pooled[name] if s.capsule.startswith("quiet")], 99)
        parts.append(
            f"{name}: {len(full)} full collections ({sum(p[3] for p in full) * 1e3:.0f} ms of "
            f"CPU), longest pause {longest * 1e3:.0f} ms, quiet requests submitted "
            f"{late * 1e3:.1f} ms late at p99"
        )
    return (
        "Stalls shared by every request in flight, while the quiet requests ran (all rounds): "
        + "; ".join(parts)
        + "."
    )


def _quiet(samples: list[Sample]) -> list[float]:
    return [s.latency_s for s in samples if s.capsule.startswith("quiet")]


def _closed_goals(closed: dict[int, dict[str, list[ClosedRun]]]) -> list[Goal]:
    """Throughput ratios at 16 clients: each round's ratio (its modes ran back to back, so a
    swing of the machine's load between rounds cancels), their mean and its bootstrap."""
    top = closed[CLIENTS[-1]]

    def ratios(baseline: str) -> list[float]:
        return _round_ratios(top, baseline, lambda run: run.tokens_per_s)

    vs_one = bootstrap_statistic(ratios("one at a time"), np.mean)
    vs_static = bootstrap_statistic(ratios("static batching"), np.mean)
    return [
        Goal.of(
            f"continuous batching / one at a time, tokens/s, {CLIENTS[-1]} clients",
            vs_one,
            at_least=3,
            unit="x",
            note=f"{len(top['continuous batching'])} interleaved rounds, paired",
        ),
        Goal.of(
            f"continuous batching / static batching, tokens/s, {CLIENTS[-1]} clients",
            vs_static,
            at_least=1,
            unit="x",
            note="request lengths 8-56 tokens; rounds paired",
        ),
    ]


def _round_ratios(
    top: dict[str, list[ClosedRun]], baseline: str, figure: Callable[[ClosedRun], float]
) -> list[float]:
    """Continuous batching's `figure` over `baseline`'s, round by round."""
    return [
        figure(ours) / figure(theirs)
        for ours, theirs in zip(top["continuous batching"], top[baseline], strict=True)
    ]


def _step_profile(closed: dict[int, dict[str, list[ClosedRun]]]) -> str:
    """Why the batch's fullness buys what it buys: the continuous replica's own fit of its
    step time against its batch size at 16 clients, each round's ratio to static, and the
    same ratio in tokens per CPU second of the process (which the machine's load moves less)."""
    top = closed[CLIENTS[-1]]
    fits = [run.step_fit for run in top["continuous batching"] if run.step_fit is not None]
    ratios = _round_ratios(top, "static batching", lambda run: run.tokens_per_s)
    per_cpu, low, high = bootstrap_statistic(
        _round_ratios(top, "static batching", lambda run: run.tokens_per_cpu_s), np.mean
    )
    per_round = (
        f"Continuous / static batching at {CLIENTS[-1]} clients, each round: "
        + ", ".join(f"{r:.2f}x" for r in ratios)
        + f"; in tokens per CPU second of the process {per_cpu:.2f}x [{low:.2f}, {high:.2f}] "
        "(mean of rounds)."
    )
    if not fits:
        return per_round
    fixed = statistics.median(a for a, _ in fits)
    per_row = statistics.median(c for _, c in fits)
    full = (fixed + per_row * MAX_BATCH) / (fixed + per_row)
    return (
        f"Profile: the continuous replica's step (one forward pass, sampling and handing out "
        f"the tokens) fits t(rows) = {fixed * 1e3:.2f} ms + {per_row * 1e3:.3f} ms per row "
        f"(least squares over its own step times at {CLIENTS[-1]} clients, the CPU time of "
        f"its thread, median of rounds): a step of {MAX_BATCH} rows costs {full:.1f}x a "
        "one-row step. On a CPU each row adds its own work, so a fuller batch (more tokens "
        f"per forward pass) saves only the fixed part of each step. {per_round}"
    )


def report(
    closed: dict[int, dict[str, list[ClosedRun]]],
    pooled: dict[str, list[Sample]],
    p99s: dict[str, tuple[float, float, int, float, int]],
    rounds_fair: list[float],
    fair: tuple[float, float, float],
    quiet_rate: float,
    max_tokens: int,
    loads: tuple[str, str],
    stalls: str,
    quick: bool,
) -> None:
    lines = [
        "| clients | mode | tokens/s (median of rounds) | p50 s | p99 s | tokens/s vs one at a "
        "time | tokens per forward pass |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for clients in CLIENTS:
        base = statistics.median(run.tokens_per_s for run in closed[clients]["one at a time"])
        for mode in MODES:
            runs = closed[clients][mode]
            rate = statistics.median(run.tokens_per_s for run in runs)
            latencies = [s.latency_s for run in runs for s in run.samples]
            tokens = sum(s.tokens for run in runs for s in run.samples)
            passes = sum(run.forward_passes for run in runs)
            lines.append(
                f"| {clients} | {mode} | {rate:.0f} | {percentile(latencies, 50):.3f} "
                f"| {percentile(latencies, 99):.3f} | {rate / base:.2f}x | {tokens / passes:.1f} |"
            )
    console.print("\n".join(lines))
    profile = _step_profile(closed)
    console.print(profile)
    fifo_ratio = p99s["fifo"][0] / p99s["alone"][0]
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
        p, m, n, noisy_tps, refused = p99s[name]
        noisy_lines.append(
            f"| {label} | {p:.3f} | {m:.3f} | {n} | {p / p99s['alone'][0]:.2f}x | "
            f"{noisy_tps:.0f} | {refused} |"
        )
    console.print("\n".join(noisy_lines))
    goal_list = [
        *_closed_goals(closed),
        Goal.of(
            "quiet capsules' p99 with fair queuing / without the noisy capsule",
            fair,
            at_most=1.5,
            unit="x",
            note="latency from scheduled arrival; paired bootstrap over rounds",
        ),
    ]
    console.print(stalls)
    for g in goal_list:
        console.print(f"{g.claim}: {g.figure:.2f}{g.unit} {g.interval()} -> {g.verdict()}")
    if quick:
        return
    rounds = len(closed[CLIENTS[-1]]["continuous batching"])
    noisy_rounds = len(rounds_fair)
    command = (
        ".venv/bin/python benchmarks/serving.py"
        + (f" --rounds {rounds}" if rounds != DEFAULT_ROUNDS else "")
        + (f" --noisy-rounds {noisy_rounds}" if noisy_rounds != NOISY_ROUNDS else "")
    )
    write_section(
        "serving",
        "\n".join(
            [
                "## Serving: continuous batching and fair queuing (`benchmarks/serving.py`)",
                "",
                f"Command: `{command}`. CPU: {cpu_name()}; the machine was shared with other "
                f"engineers' jobs ({loads[0]} at the start, {loads[1]} at the end), which "
                "moves absolute figures; the interleaved ratios carry the claims. Model: the "
                "`small` tier's architecture (Canon Llama, dummy weights), one replica of "
                f"{MAX_BATCH} slots, torch on one intra-op thread. The replica schedules per "
                "iteration: one forward pass per step feeds every running request its next "
                "token and every newcomer its prompt, over a preallocated per-slot KV cache "
                "(`docs/serving.md`). *Tokens per forward pass*: the tokens the replica "
                "decoded over its forward passes, i.e. how full its batch was.",
                "",
                "Closed loop: each client sends its next request when the last one returns; "
                f"each request asks for {LENGTHS[0]}-{LENGTHS[1]} tokens (seeded, the same for "
                "every mode) and decodes them all. Baselines on the same replica: one request "
                f"at a time, and static batching (a batch of up to {MAX_BATCH} gathered for "
                f"{STATIC_WINDOW_S * 1e3:g} ms runs until its longest request ends; only then "
                f"does the next start). {rounds} rounds, the modes taking turns in a rotated order, "
                "after an untimed warm-up run of each.",
                "",
                *lines,
                "",
                profile,
                "",
                f"Noisy neighbour (open loop, Poisson arrivals): {QUIET_CAPSULES} quiet capsules "
                f"at {quiet_rate:.2f} requests/s each ({QUIET_LOAD:.0%} of the tier's measured "
                f"capacity together, {max_tokens} tokens each), then beside a noisy capsule at "
                f"{NOISY_FACTOR}x that rate (the tier overloaded). Baseline: plain FIFO in the "
                "same run. Latency: from each request's scheduled arrival to its last token, so "
                "time the load generator spent behind schedule counts (no coordinated omission).",
                "",
                *noisy_lines,
                "",
                f"With FIFO the quiet p99 is {fifo_ratio:.2f}x its p99 alone. Each scenario ran "
                f"{noisy_rounds} times for {NOISY_ROUND_S:g} s, taking turns in a rotated order, the "
                "scenarios of a round on the same seeded arrivals (a new seed each round), "
                "samples pooled; the fair/alone p99 ratio of each "
                f"round: {', '.join(f'{r:.2f}x' for r in rounds_fair)}. Where the quiet tail "
                "waited: of the quiet requests at or beyond their p99, the median share of "
                "latency spent before the first token (fair queue, admission, prefill) was "
                f"{_tail_wait(pooled['alone'])} alone and {_tail_wait(pooled['fair'])} with "
                "fair queuing, the rest decoding. The process freezes its "
                "start-up heap (`gc.freeze()`, as the serve commands do). " + stalls,
                "",
                *goals_markdown(goal_list),
                "",
                "[95% bootstrap interval]: for throughput, of the mean of each round's ratio "
                "(the modes of a round ran back to back); for p99, over rounds (each resample "
                "pools the same rounds of both scenarios).",
            ]
        ),
    )
    write_results("serving", command, goal_list)


if __name__ == "__main__":
    main()
