"""Ternary-weight x int8 kernels against float32 BLAS and against the memory floor.

For 1024, 2048 and 4096 square matrices, GEMV (one token) and GEMM (a batch of 8), every
kernel of `trifecta.edge.kernels` that this CPU runs (the AVX2 one forced even where VNNI
exists) is timed beside, in the same run:
- float32 numpy `x @ W.T` (OpenBLAS), the baseline, at every thread count up to N; each ratio
  is taken against BLAS's best thread count;
- the memory floor: the time to read the kernel's packed weights once (a streaming sum over
  the very same bytes, the kernel's own buffer, vectorised by LLVM), the fastest of three
  ways of reading them: plain,
  and with a software prefetch as far ahead as the kernels' (8 KB) into L2 or into L1 (a prefetching kernel can beat
  a plain read, which would then be no floor);
- the float32 floor: the same reads over the float32 matrix BLAS multiplies. Flushed, the
  best any 2-bit kernel can do against a memory-bound BLAS is their ratio (about 16x, the
  ratio of the bytes), so the speedup over BLAS is judged as a share of it.

Repeated: calls back to back (a matrix that fits in the cache stays there; the 64 MB float32
matrix at 4096 never does). Flushed: before every call a buffer several times the cache is
read by every thread, the pools are left to go idle, then each contender makes a small
untimed call of its own compiled function (BLAS: a 512 x 512 product of the same batch on its
threads; each kernel: itself on a 64 x 64 matrix; each floor read: itself on 4 KB), so no
side pays inside the timed call for waking its workers or for dispatch state the flush evicted.

BLAS and the kernels are timed in alternating rounds (OpenBLAS workers spin after a call and
would steal the cores from numba if interleaved call by call). Within a round the kernels
and the floor reads take turns call by call (the order reversed every other repetition), so
a kernel and its floor are timed side by side under the same load: ratios to a floor are
the median of the per-repetition ratios, with a 95% bootstrap interval over repetitions;
ratios to BLAS are of medians, each side resampled. A goal is met only when its interval
clears it.

This file builds the cases and runs the rounds; the floor reads, the flush and one measured
round are in `_ternary_timing`, the ratios, goals and section in `_ternary_report`.

    .venv/bin/python benchmarks/ternary_kernels.py [--sizes 1024 2048 4096] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numba
import numpy as np
from rich.console import Console
from threadpoolctl import threadpool_limits

from benchmarks._report import machine_load, write_results, write_section
from benchmarks._ternary_report import Case, goals, report
from benchmarks._ternary_timing import (
    BLAS_SPIN_S,
    FLUSH_BYTES,
    ROUNDS,
    Samples,
    Timed,
    clock_for,
    floor_reads,
    flush_caches,
    measure,
)
from trifecta.edge.kernels import KERNELS, PreparedTernary, available_kernels
from trifecta.edge.kernels.reference import reference_matmul


def _by_method(timings: dict[str, Samples], prefix: str) -> dict[str, Samples]:
    return {k.removeprefix(prefix): v for k, v in timings.items() if k.startswith(prefix)}


def _kernel_warm(kernel: PreparedTernary, batch: int, threads: int) -> Callable[[], object]:
    """The same compiled entry the timed call goes through (parallel or serial), on a
    64 x 64 matrix of the same kernel."""
    bound = kernel.bind(np.zeros((batch, kernel.cols), np.int8), threads)[0]
    assert isinstance(bound, partial)
    small = kernel.spec.prepare(np.zeros((64, 64), np.int8))
    x = np.zeros(batch * small.padded_cols, np.int8)
    out = np.empty(batch * small.padded_rows, np.int32)
    return partial(
        bound.func,
        small.stream,
        x,
        out,
        batch,
        small.padded_rows,
        small.padded_cols,
        *bound.args[6:],  # the arguments after the shape (the prefetch distance), as bound
    )


def run_case(
    size: int, batch: int, threads: int, kernels: list[str], reps: int, console: Console
) -> Case:
    numba.set_num_threads(threads)
    lines = np.ones(FLUSH_BYTES // 8, np.uint64)
    # BLAS's wake-up call: the same shape class (gemv at batch 1, gemm at 8), large enough
    # for OpenBLAS to run it on all its threads (1 MB, against the 4-64 MB timed after it)
    warm_a, warm_b = np.ones((512, 512), np.float32), np.ones((batch, 512), np.float32)
    rng = np.random.default_rng(size)
    values = rng.integers(-1, 2, (size, size)).astype(np.int8)
    dense = values.astype(np.float32) * np.float32(0.05)
    x_q = rng.integers(-128, 128, (batch, size)).astype(np.int8)
    x_f = x_q.astype(np.float32)
    expected = reference_matmul(values, x_q) if size <= 2048 or batch == 1 else None
    prepared = {name: KERNELS[name].prepare(values) for name in kernels}
    contenders: dict[str, Timed] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for name, kernel in prepared.items():
            out = kernel.matmul(x_q, threads)
            if expected is not None and not np.array_equal(out, expected):
                raise SystemExit(f"{name} is wrong at {size} batch {batch}")
            contenders[name] = Timed(
                kernel.bind(x_q, threads)[0], _kernel_warm(kernel, batch, threads)
            )
            for method, read in floor_reads(kernel.stream, threads).items():
                contenders[f"{name}:floor:{method}"] = read
    for method, read in floor_reads(dense, threads).items():
        contenders[f"f32:floor:{method}"] = read
    blas: dict[int, Samples] = {}
    timings: dict[str, Samples] = {}
    for _ in range(ROUNDS):
        for blas_threads in range(1, threads + 1):
            with threadpool_limits(limits=blas_threads, user_api="blas"):
                samples: dict[str, Samples] = {"blas": blas.get(blas_threads, Samples([], []))}
                measure(
                    {
                        "blas": Timed(
                            partial(np.matmul, x_f, dense.T), partial(np.matmul, warm_b, warm_a.T)
                        )
                    },
                    partial(flush_caches, lines),
                    reps,
                    samples,
                    clock_for(threads),
                )
                blas[blas_threads] = samples["blas"]
            time.sleep(BLAS_SPIN_S)
        with threadpool_limits(limits=1, user_api="blas"):
            measure(
                contenders,
                partial(flush_caches, lines),
                reps,
                timings,
                clock_for(threads),
            )
    case = Case(
        size,
        batch,
        threads,
        {n: timings[n] for n in kernels},
        {n: _by_method(timings, f"{n}:floor:") for n in kernels},
        _by_method(timings, "f32:floor:"),
        blas,
    )
    best_t, best = case.best_blas(True)
    console.print(
        f"  {size:5d} b{batch} t{threads} BLAS (best t{best_t}) ms repeated/flushed "
        f"{best.median_ms(False):.3f}/{best.median_ms(True):.3f}; "
        + ", ".join(
            f"{n} {case.kernels[n].median_ms(False):.3f}/{case.kernels[n].median_ms(True):.3f}"
            f" (floor {case.floor(n, True)[1].median_ms(True):.3f} {case.floor(n, True)[0]})"
            for n in kernels
        )
    )
    return case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=15, help="calls per contender per round")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    console = Console()
    load_at_start = machine_load()
    kernels = [name for name, reason in available_kernels().items() if reason is None]
    cases = [
        run_case(size, batch, threads, kernels, args.reps, console)
        for threads in args.threads
        for size in args.sizes
        for batch in (1, 8)
    ]
    command = " ".join([".venv/bin/python benchmarks/ternary_kernels.py", *sys.argv[1:]])
    goal_list = goals(cases, kernels)
    for g in goal_list:
        console.print(
            f"  {g.claim}: {g.figure:.2f} {g.interval()} goal {g.direction} {g.goal:g}: {g.verdict()}"
        )
    if not args.no_write:
        write_section("ternary_kernels", report(cases, kernels, goal_list, command, load_at_start))
        write_results("ternary_kernels", command, goal_list)
    return 0


if __name__ == "__main__":
    sys.exit(main())
