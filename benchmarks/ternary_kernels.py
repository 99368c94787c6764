"""Ternary-weight x int8 kernels against float32 BLAS and against the memory floor.

For 1024, 2048 and 4096 square matrices, GEMV (one token) and GEMM (a batch of 8), every
kernel of `trifecta.edge.kernels` is timed beside, in the same run:
- float32 numpy `x @ W.T` (OpenBLAS), the baseline;
- the memory floor: the time to read the kernel's packed weights once (a streaming sum
  reduction over the same bytes, vectorised by LLVM).
Each is measured with the weights resident in cache (repeated calls) and with the caches
flushed before every call (a 96 MB buffer, three times the L3, written by every thread), as
for a model too large for the cache. Reported figures are medians; ratios are the claims.

Threads are pinned: `--threads N` runs the kernels and the floor on N numba threads
(`numba.set_num_threads`) and BLAS on N threads for its own measurement
(`threadpoolctl.threadpool_limits`), with BLAS held to 1 thread while numba runs, so the two
pools never share the cores.

Goals at 4096 x 4096 GEMV: the best kernel >= 20x faster than float32 BLAS; within 1.2x of
the memory floor with the cache flushed and within 2.5x cache-resident; the portable kernel
>= 5x faster than BLAS. `--check` exits 1 when one is missed.

    .venv/bin/python benchmarks/ternary_kernels.py [--sizes 1024 2048 4096] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numba
import numpy as np
from numba import njit, prange
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from benchmarks._report import write_section
from trifecta.edge.kernels import KERNELS, available_kernels
from trifecta.edge.kernels.cpu import host_cpu
from trifecta.edge.kernels.reference import reference_matmul

FLUSH_BYTES = 96 * 1024 * 1024
DESCRIPTION = """\
Ternary-weight x int8 kernels (`trifecta.edge.kernels`) against float32 numpy/OpenBLAS and
against the memory floor (reading the kernel's packed weights once), same run, medians.
CPU `{cpu}` (AVX-512 VNNI). Threads pinned: numba via `numba.set_num_threads`, BLAS via
`threadpoolctl` (N threads for its own run, 1 while numba runs). Flushed: a 96 MB buffer
written by every thread before each call. Timings move with other load on the machine:
run it on an otherwise idle machine (`make bench`)."""
GOALS = {"best_vs_blas": 20.0, "floor_flushed": 1.2, "floor_resident": 2.5, "portable_vs_blas": 5.0}


@njit(parallel=True, cache=True)
def _stream_read(words: np.ndarray) -> np.uint64:
    """Read every byte once (a wrapping sum of all 64-bit words): the memory floor."""
    acc = np.uint64(0)
    for i in prange(words.size):
        acc += words[i]
    return acc


@njit(parallel=True, cache=True)
def _flush(buffer: np.ndarray, stamp: np.uint8) -> None:
    for i in prange(buffer.size // 64):
        buffer[i * 64] = stamp


@dataclass
class Timing:
    resident_ms: float
    flushed_ms: float


@dataclass
class Row:
    size: int
    batch: int
    kernel: str
    threads: int
    bits: float
    kernel_ms: Timing
    blas_ms: Timing
    floor_ms: Timing

    def vs_blas(self, flushed: bool) -> float:
        if flushed:
            return self.blas_ms.flushed_ms / self.kernel_ms.flushed_ms
        return self.blas_ms.resident_ms / self.kernel_ms.resident_ms

    def vs_floor(self, flushed: bool) -> float:
        if flushed:
            return self.kernel_ms.flushed_ms / self.floor_ms.flushed_ms
        return self.kernel_ms.resident_ms / self.floor_ms.resident_ms


def measure(call: Callable[[], object], flush: Callable[[], None], reps: int) -> Timing:
    call()
    resident = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        resident.append(time.perf_counter() - start)
    flushed = []
    for _ in range(max(5, reps // 2)):
        flush()
        start = time.perf_counter()
        call()
        flushed.append(time.perf_counter() - start)
    return Timing(statistics.median(resident) * 1e3, statistics.median(flushed) * 1e3)


def run(sizes: list[int], threads: int, reps: int, console: Console) -> list[Row]:
    numba.set_num_threads(threads)
    buffer = np.zeros(FLUSH_BYTES, np.uint8)
    stamp = [0]

    def flush() -> None:
        stamp[0] = (stamp[0] + 1) % 255
        _flush(buffer, np.uint8(stamp[0]))

    rows: list[Row] = []
    kernels = [name for name, reason in available_kernels().items() if reason is None]
    for size in sizes:
        rng = np.random.default_rng(size)
        values = rng.integers(-1, 2, (size, size)).astype(np.int8)
        dense = values.astype(np.float32) * np.float32(0.05)
        for batch in (1, 8):
            x_q = rng.integers(-128, 128, (batch, size)).astype(np.int8)
            x_f = x_q.astype(np.float32)
            with threadpool_limits(limits=threads, user_api="blas"):
                blas = measure(partial(np.matmul, x_f, dense.T), flush, reps)
            expected = reference_matmul(values, x_q) if size <= 2048 or batch == 1 else None
            with threadpool_limits(limits=1, user_api="blas"):
                for name in kernels:
                    prepared = KERNELS[name].prepare(values)
                    out = prepared.matmul(x_q, threads)
                    if expected is not None and not np.array_equal(out, expected):
                        raise SystemExit(f"{name} is wrong at {size} batch {batch}")
                    timing = measure(partial(prepared.matmul, x_q, threads), flush, reps)
                    words = np.frombuffer(prepared.stream.tobytes(), np.uint64)
                    floor = measure(partial(_stream_read, words), flush, reps)
                    rows.append(
                        Row(
                            size,
                            batch,
                            name,
                            threads,
                            KERNELS[name].bits_per_weight,
                            timing,
                            blas,
                            floor,
                        )
                    )
                    console.print(
                        f"  {size:5d} b{batch} {name:9s} t{threads} ms (resident/flushed): "
                        f"{timing.resident_ms:.3f}/{timing.flushed_ms:.3f}, "
                        f"BLAS {blas.resident_ms:.3f}/{blas.flushed_ms:.3f}, "
                        f"floor {floor.resident_ms:.3f}/{floor.flushed_ms:.3f}"
                    )
    return rows


def verdicts(rows: list[Row], threads: int) -> list[tuple[str, float, float, bool]]:
    gemv = {r.kernel: r for r in rows if r.size == 4096 and r.batch == 1 and r.threads == threads}
    if not gemv:
        return []
    best = min(gemv.values(), key=lambda r: r.kernel_ms.flushed_ms)
    name = f"best ({best.kernel})"
    out = [
        (f"{name} vs BLAS, flushed", best.vs_blas(True), GOALS["best_vs_blas"]),
        (f"{name} vs BLAS, resident", best.vs_blas(False), GOALS["best_vs_blas"]),
        (f"{name} / floor, flushed", best.vs_floor(True), GOALS["floor_flushed"]),
        (f"{name} / floor, resident", best.vs_floor(False), GOALS["floor_resident"]),
    ]
    if "portable" in gemv:
        out.append(
            ("portable vs BLAS, flushed", gemv["portable"].vs_blas(True), GOALS["portable_vs_blas"])
        )
    # speed-ups must reach their goal; ratios to the floor must stay under theirs
    return [
        (claim, value, goal, value >= goal if "BLAS" in claim else value <= goal)
        for claim, value, goal in out
    ]


def report(rows: list[Row], threads_list: list[int], command: str) -> tuple[str, bool]:
    lines = [
        *DESCRIPTION.format(cpu=host_cpu()).splitlines(),
        "",
        f"Command: `{command}`",
        "",
        "| size | batch | kernel | bits/w | threads | ms resident | ms flushed "
        "| x BLAS (res / fl) | / floor (res / fl) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.size} | {r.batch} | {r.kernel} | {r.bits:g} | {r.threads} "
            f"| {r.kernel_ms.resident_ms:.3f} | {r.kernel_ms.flushed_ms:.3f} "
            f"| {r.vs_blas(False):.1f} / {r.vs_blas(True):.1f} "
            f"| {r.vs_floor(False):.2f} / {r.vs_floor(True):.2f} |"
        )
    ok = True
    lines += [
        "",
        "Goals at 4096 x 4096 GEMV:",
        "",
        "| threads | claim | measured | goal | met |",
        "|---:|---|---:|---:|---|",
    ]
    for threads in threads_list:
        for claim, value, goal, met in verdicts(rows, threads):
            ok &= met
            lines.append(
                f"| {threads} | {claim} | {value:.2f} | {goal:g} | {'yes' if met else 'no'} |"
            )
    lines += [
        "",
        "Bits per weight: `vnni`, `portable`, `lut-i2` 2.0 (2-bit codes); `lut-b3` 1.6",
        "(five weights per byte in base 3); float32 baseline 32.",
    ]
    return "\n".join(lines), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    console = Console()
    rows: list[Row] = []
    for threads in args.threads:
        console.print(f"[bold]threads = {threads}[/bold]")
        rows += run(args.sizes, threads, args.reps, console)
    command = "python benchmarks/ternary_kernels.py " + " ".join(sys.argv[1:])
    markdown, ok = report(rows, args.threads, command.strip())
    table = Table("threads", "claim", "measured", "goal", "met")
    for threads in args.threads:
        for claim, value, goal, met in verdicts(rows, threads):
            table.add_row(str(threads), claim, f"{value:.2f}", f"{goal:g}", "yes" if met else "NO")
    console.print(table)
    if not args.no_write:
        write_section("ternary_kernels", markdown)
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
