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

    .venv/bin/python benchmarks/ternary_kernels.py [--sizes 1024 2048 4096] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numba
import numpy as np
from numba import njit, prange
from rich.console import Console
from threadpoolctl import threadpool_limits

from benchmarks._report import (
    Goal,
    bootstrap_ratio,
    cpu_name,
    goals_markdown,
    machine_load,
    write_results,
    write_section,
)
from trifecta.edge.kernels import KERNELS, PreparedTernary, available_kernels, select_kernel
from trifecta.edge.kernels.reference import reference_matmul
from trifecta.edge.kernels.vnni import PREFETCH_BYTES
from trifecta.edge.kernels.zmm import (
    prefetch,
    prefetch_to_l1,
    zmm_add,
    zmm_load,
    zmm_store,
    zmm_zero,
)

# The VM reports the host's L3 (480 MiB); reads beyond ~32 MB already run at DRAM speed here,
# so 256 MB leaves nothing of a previous call's weights in any cache level.
FLUSH_BYTES = 256 * 1024 * 1024
SETTLE_S = 0.005  # after a flush: numba's OpenMP workers and OpenBLAS's stop spinning
BLAS_SPIN_S = 0.3  # between a BLAS block and a kernel block
ROUNDS = 3
AHEAD_BYTES = PREFETCH_BYTES  # the prefetching floor reads run as far ahead as the kernels


@njit(parallel=True, cache=True)
def _stream_read(words: np.ndarray) -> np.uint64:
    """Read every byte once (a wrapping sum of all 64-bit words): the memory floor."""
    acc = np.uint64(0)
    for i in prange(words.size):
        acc += words[i]
    return acc


@njit(inline="always")
def _vector_read_part(stream, sums, part, parts, ahead_l1):
    """Part `part` of `parts` of the byte stream, 64 bytes per load, each line prefetched
    AHEAD_BYTES ahead; the 16 lane sums land in sums[16 part:]."""
    lines = stream.size // 64
    per = -(-lines // parts)
    acc = zmm_zero()
    for line in range(part * per, min(lines, (part + 1) * per)):
        if ahead_l1:
            prefetch_to_l1(stream, line * 64 + AHEAD_BYTES)
        else:
            prefetch(stream, line * 64 + AHEAD_BYTES)
        acc = zmm_add(acc, zmm_load(stream, line * 64))
    zmm_store(sums, part * 16, acc)


@njit(parallel=True, cache=True)
def _vector_read_ahead(stream, sums, parts, ahead_l1):
    """Read every byte once with 512-bit loads (plain LLVM vector IR: two 256-bit loads on
    an AVX2 machine) and a software prefetch, one part per thread."""
    for part in prange(parts):
        _vector_read_part(stream, sums, part, parts, ahead_l1)


@dataclass(frozen=True)
class Timed:
    """A timed call and its untimed warm-up after a flush: the same compiled function on a
    tiny input, which wakes the thread pool and brings back into cache the dispatcher state
    the call goes through (after a 256 MB flush that state is cold too, and the Python and
    numba dispatch of a 6-argument kernel call then cost tens of microseconds more than a
    1-argument read: a decoder calling layer after layer keeps it warm)."""

    call: Callable[[], object]
    warm: Callable[[], object]


def floor_reads(stream: np.ndarray, threads: int) -> dict[str, Timed]:
    """The ways of reading a stream once that the floor takes the fastest of."""
    flat = stream.reshape(-1).view(np.uint8)
    sums = np.zeros(16 * threads, np.int32)
    tiny = np.ones(4096, np.uint8)
    return {
        "plain": Timed(partial(_stream_read, _words(stream)), partial(_stream_read, _words(tiny))),
        **{
            name: Timed(
                partial(_vector_read_ahead, flat, sums, threads, into_l1),
                partial(_vector_read_ahead, tiny, sums, threads, into_l1),
            )
            for name, into_l1 in (("prefetch-L2", False), ("prefetch-L1", True))
        },
    }


@njit(parallel=True, cache=True)
def _flush(lines: np.ndarray) -> np.uint64:
    """Read one word of every 64-byte line of the buffer: every cached line is replaced by a
    clean one, as after a model's other layers were read (a written buffer would leave dirty
    lines whose write-back slows whichever call comes next)."""
    acc = np.uint64(0)
    for i in prange(lines.size // 8):
        acc += lines[i * 8]
    return acc


@dataclass
class Samples:
    repeated: list[float]
    flushed: list[float]

    def median_ms(self, flushed: bool) -> float:
        return float(np.median(self.flushed if flushed else self.repeated)) * 1e3

    def pick(self, flushed: bool) -> list[float]:
        return self.flushed if flushed else self.repeated


def fastest(reads: dict[str, Samples], flushed: bool) -> tuple[str, Samples]:
    """The floor: the read with the lowest median."""
    name = min(reads, key=lambda n: reads[n].median_ms(flushed))
    return name, reads[name]


def bootstrap_paired(
    numerator: list[float], denominator: list[float], resamples: int = 2000
) -> tuple[float, float, float]:
    """The median of the per-repetition ratios numerator[i] / denominator[i] and its 95%
    percentile-bootstrap interval (repetitions resampled). Both sides of a pair were timed
    in the same repetition, one right after the other, each after its own flush, so the
    slow drift of a shared machine (other jobs' use of the memory bus, which moved the
    floor from 0.24 to 0.34 ms between runs) falls on both and cancels in the ratio; a ratio
    of two separately resampled medians keeps it."""
    ratios = np.asarray(numerator, float) / np.asarray(denominator, float)
    rng = np.random.default_rng(0)
    draws = np.median(ratios[rng.integers(0, ratios.size, (resamples, ratios.size))], axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(np.median(ratios)), float(low), float(high)


def bootstrap_share(
    blas: list[float], mine: list[float], f32_floor: list[float], floor: list[float]
) -> tuple[float, float, float]:
    """(BLAS / kernel) / (float32 floor / 2-bit floor): the kernel's speedup over BLAS as a
    share of the speedup the bytes allow, computed as median(BLAS) / median over repetitions
    of kernel_i x f32_floor_i / floor_i (the kernel's time scaled to float32 bytes, the three
    timed in the same repetition). BLAS runs in its own blocks (its workers spin after a
    call), so its samples are resampled independently of the paired triples. 95% percentile
    bootstrap."""
    rng = np.random.default_rng(0)
    b = np.asarray(blas, float)
    scaled = np.asarray(mine, float) * np.asarray(f32_floor, float) / np.asarray(floor, float)
    draws_b = np.median(b[rng.integers(0, b.size, (2000, b.size))], axis=1)
    draws_s = np.median(scaled[rng.integers(0, scaled.size, (2000, scaled.size))], axis=1)
    low, high = np.percentile(draws_b / draws_s, [2.5, 97.5])
    return float(np.median(b) / np.median(scaled)), float(low), float(high)


def clock_for(threads: int) -> Callable[[], float]:
    """One thread: the calling thread's CPU time. On a shared machine the wall time of a call
    includes every time slice the OS gave other processes, which grows with the call's length
    (a 4 ms BLAS GEMV measured 121 ms of wall time at a load average of 15 on 2 cores, and
    4.4 ms of CPU time; a 0.15 ms kernel call rarely loses a slice). Single-threaded kernels,
    floors and BLAS all run on the calling thread, so its CPU time is their whole cost.
    Several threads: wall time (CPU time would add the threads up)."""
    return time.thread_time if threads == 1 else time.perf_counter


def measure(
    contenders: Mapping[str, Timed],
    flush: Callable[[], object],
    reps: int,
    into: dict[str, Samples],
    clock: Callable[[], float],
) -> None:
    """One round: each contender's repeated calls in a block, then `reps` flushed calls per
    contender taking turns, in reverse order every other repetition (the same background
    load falls on every contender, and none is always first after the pause)."""
    for name, timed in contenders.items():
        samples = into.setdefault(name, Samples([], []))
        timed.call()
        for _ in range(reps):
            start = clock()
            timed.call()
            samples.repeated.append(clock() - start)
    order = list(contenders.items())
    for rep in range(reps):
        for name, timed in order if rep % 2 == 0 else order[::-1]:
            flush()
            time.sleep(SETTLE_S)
            timed.warm()
            start = clock()
            timed.call()
            into[name].flushed.append(clock() - start)


@dataclass
class Case:
    size: int
    batch: int
    threads: int
    kernels: dict[str, Samples]
    floors: dict[str, dict[str, Samples]]  # by kernel, then by read method
    f32_floors: dict[str, Samples]  # the float32 matrix, by read method
    blas: dict[int, Samples]  # by BLAS thread count

    def best_blas(self, flushed: bool) -> tuple[int, Samples]:
        threads = min(self.blas, key=lambda t: self.blas[t].median_ms(flushed))
        return threads, self.blas[threads]

    def vs_blas(self, kernel: str, flushed: bool) -> tuple[float, float, float]:
        blas = self.best_blas(flushed)[1]
        mine = self.kernels[kernel]
        pick = (lambda s: s.flushed) if flushed else (lambda s: s.repeated)
        return bootstrap_ratio(pick(blas), pick(mine))

    def floor(self, kernel: str, flushed: bool) -> tuple[str, Samples]:
        """The fastest read of this kernel's own stream. Not pooled with the other kernels'
        streams of the same size: where a buffer's pages sit moves its flushed read time.
        Four copies of the same 4096 `vnni16` stream, read in one process, took 0.336, 0.307,
        0.281 and 0.270 ms, and the kernel followed its buffer (0.362 to 0.304 ms; load 21),
        so a pooled floor judged one kernel partly by another buffer's placement."""
        return fastest(self.floors[kernel], flushed)

    def vs_floor(self, kernel: str, flushed: bool) -> tuple[float, float, float]:
        floor = self.floor(kernel, flushed)[1]
        return bootstrap_paired(self.kernels[kernel].pick(flushed), floor.pick(flushed))

    def byte_ceiling(self, kernel: str) -> tuple[float, float, float]:
        """Flushed float32 floor / 2-bit floor: the most any kernel reading these 2-bit bytes
        can gain over a BLAS that runs at memory speed."""
        f32 = fastest(self.f32_floors, True)[1]
        return bootstrap_paired(f32.flushed, self.floor(kernel, True)[1].flushed)

    def ceiling_share(self, kernel: str) -> tuple[float, float, float]:
        return bootstrap_share(
            self.best_blas(True)[1].flushed,
            self.kernels[kernel].flushed,
            fastest(self.f32_floors, True)[1].flushed,
            self.floor(kernel, True)[1].flushed,
        )


def _by_method(timings: dict[str, Samples], prefix: str) -> dict[str, Samples]:
    return {k.removeprefix(prefix): v for k, v in timings.items() if k.startswith(prefix)}


def _words(stream: np.ndarray) -> np.ndarray:
    """The packed stream itself as 64-bit words (no copy): the floor reads the kernel's bytes."""
    flat = stream.reshape(-1)
    return flat[: flat.size - flat.size % 8].view(np.uint64)


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
                    partial(_flush, lines),
                    reps,
                    samples,
                    clock_for(threads),
                )
                blas[blas_threads] = samples["blas"]
            time.sleep(BLAS_SPIN_S)
        with threadpool_limits(limits=1, user_api="blas"):
            measure(
                contenders,
                partial(_flush, lines),
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


def _fmt(ratio: tuple[float, float, float], digits: int) -> str:
    value, low, high = ratio
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def goals(cases: list[Case], kernels: list[str]) -> list[Goal]:
    """The claims at 4096 x 4096, per thread count (see the module docstring)."""
    by_key = {(c.size, c.batch, c.threads): c for c in cases}
    best_name = select_kernel().name
    out: list[Goal] = []
    for threads in sorted({c.threads for c in cases}):
        gemv = by_key.get((4096, 1, threads))
        gemm = by_key.get((4096, 8, threads))
        if gemv is None:
            continue
        at = f"4096 GEMV, {threads} thread(s)"

        def goal(claim: str, ratio: tuple[float, float, float], target: float, up: bool) -> Goal:
            return Goal(
                claim=claim,
                figure=ratio[0],
                low=ratio[1],
                high=ratio[2],
                goal=target,
                direction="at least" if up else "at most",
                unit="x",
            )

        out += [
            goal(
                f"{best_name} / memory floor, flushed, {at}",
                gemv.vs_floor(best_name, True),
                1.2,
                False,
            ),
            goal(
                f"{best_name} / memory floor, repeated, {at}",
                gemv.vs_floor(best_name, False),
                2.5,
                False,
            ),
            goal(
                f"{best_name} speedup over best float32 BLAS as a share of the byte ceiling "
                f"(float32 floor / 2-bit floor), flushed, {at}",
                gemv.ceiling_share(best_name),
                0.8,
                True,
            ),
            goal(
                f"portable vs best float32 BLAS, flushed, {at}",
                gemv.vs_blas("portable", True),
                5,
                True,
            ),
        ]
        if "avx2" in kernels and threads == 1:
            out.append(
                goal(
                    f"avx2 (forced) / memory floor, flushed, {at}",
                    gemv.vs_floor("avx2", True),
                    1.3,
                    False,
                )
            )
            if gemm is not None:
                out.append(
                    goal(
                        f"avx2 (forced) vs best float32 BLAS, flushed, 4096 batch 8, {threads} thread(s)",
                        gemm.vs_blas("avx2", True),
                        5,
                        True,
                    )
                )
    return out


def _at_4096_gemv(cases: list[Case]) -> list[Case]:
    return [c for c in cases if c.size == 4096 and c.batch == 1]


def _placement_lines(cases: list[Case], kernels: list[str]) -> list[str]:
    """Each kernel's own floor at the 4096 GEMV, and each kernel's time against the fastest
    of those floors: the buffers' placement, stated rather than hidden in the ratio."""
    lines = []
    for c in _at_4096_gemv(cases):
        floors = {n: c.floor(n, True)[1].median_ms(True) for n in kernels}
        fastest_ms = min(floors.values())
        lines.append(
            f"Where the buffers sit ({c.threads} thread(s), 4096 GEMV flushed): the floors of "
            "the kernels' own buffers, read the same way in the same rounds, are "
            + ", ".join(f"{n} {ms:.3f} ms" for n, ms in floors.items())
            + ". Against the fastest of them instead of its own, each kernel would be at "
            + ", ".join(f"{n} {c.kernels[n].median_ms(True) / fastest_ms:.2f}x" for n in kernels)
            + " (a ratio of medians across buffers, no pairing). The buffers were prepared "
            f"in the order {', '.join(kernels)}. The kernel follows its buffer: in a "
            "development check, four copies of one `vnni16` stream in one process read in "
            "0.270 to 0.336 ms flushed, and `vnni` took 0.304 to 0.362 ms on them (load 21)."
        )
    return lines


def _ceiling_lines(cases: list[Case], best_name: str) -> list[str]:
    """Why the speedup over BLAS is judged as a share of the byte ceiling, with the figures
    the old goal was about."""
    figures = [
        f"{c.threads} thread(s): byte ceiling (float32 floor / 2-bit floor) "
        f"{_fmt(c.byte_ceiling(best_name), 1)}x, {best_name} over best BLAS "
        f"{_fmt(c.vs_blas(best_name, True), 1)}x"
        for c in _at_4096_gemv(cases)
    ]
    resident = [
        f"{c.size} batch {c.batch}, {c.threads} thread(s): {_fmt(c.vs_blas(best_name, False), 1)}x"
        for c in cases
        if c.size == 1024
    ]
    return [
        "Why the speedup over BLAS is a share of the byte ceiling, not a fixed 20x. Flushed, "
        "both sides stream their weights from DRAM, and 2-bit weights are 16x fewer bytes than "
        "float32: against a BLAS at memory speed no 2-bit kernel passes the ratio of the two "
        "memory floors, the float32 matrix's and the packed one's (each the fastest of the "
        "three reads). The goal is therefore the kernel's speedup over BLAS divided by that "
        "ceiling, at least 0.8; it can pass 1 where BLAS runs slower than its own floor. "
        "The retired goal, at least 20x over BLAS flushed, was out of reach by construction; "
        f"its figures in this run, 4096 GEMV: {'; '.join(figures)}.",
        "",
        "Resident (repeated calls), where the float32 matrix is not streamed from DRAM "
        "(1024: 4 MB of float32, held in L3 across calls) and BLAS's arithmetic counts: "
        f"{best_name} over best BLAS {'; '.join(resident)}. No goal: the ratio mixes a cache "
        "level with arithmetic and moves with the cache sizes of the CPU.",
    ]


def report(
    cases: list[Case], kernels: list[str], goal_list: list[Goal], command: str, load_at_start: str
) -> str:
    best_name = select_kernel().name
    lines = [
        "## Ternary kernels (`benchmarks/ternary_kernels.py`)",
        "",
        f"Command: `{command}`. CPU: {cpu_name()}; this is **not** an AVX2-only machine, so "
        "the `avx2` kernel is forced here (it is what `select_kernel` picks on an AVX2 CPU "
        f"without VNNI). Machine shared with other engineers' jobs while this ran ({load_at_start} "
        f"at the start, {machine_load()} at the end): absolute times move, and flushed times carry the other jobs' use of the "
        "memory bus; the interleaved ratios move less.",
        "",
        "Baseline in the same run: float32 numpy `x @ W.T` (OpenBLAS) at 1 and, for 2-thread rows, "
        "2 threads, each ratio against the faster of the two. Memory floor: the fastest of three "
        "reads of the kernel's own packed bytes (a plain vectorised sum; 512-bit loads with a "
        "software prefetch 8 KB ahead into L2, as far as the kernels prefetch; the same into "
        "L1), since a prefetching kernel can beat a plain read, which is then no floor; the column names the read that won. "
        "Each kernel's floor reads that kernel's own buffer: where a buffer's pages sit moves "
        "its flushed read time (four copies of the same 4 MB stream in one process read in "
        "0.270 to 0.336 ms, and the kernel followed its buffer), so a floor pooled over the "
        "kernels' streams, as earlier runs took it, judged one kernel by another's placement. "
        "*Repeated*: calls back to back (the 2-bit matrix stays in cache "
        "up to 4096; the 64 MB float32 matrix at 4096 never fits, so BLAS streams it either way). "
        "*Flushed*: a 256 MB buffer read by every thread before each call, the pools left idle, "
        "then each side's pool woken by an untimed small call (BLAS: a 512 x 512 product of the "
        "same batch; each kernel: itself on a 64 x 64 matrix; each floor read: itself on 4 KB), "
        "so no side pays for waking threads or for the dispatch state the flush evicted (a "
        "decoder calling layer after layer keeps it warm; cold, a 6-argument kernel call paid "
        "tens of microseconds more than a 1-argument read). "
        f"{ROUNDS} alternating rounds. Within a round every kernel and floor read takes turns "
        "call by call (reversed every other repetition): the */ floor* columns are the median "
        "of the per-repetition ratios kernel / its floor, [95% bootstrap interval over "
        "repetitions], which cancels the drift of a shared machine; *x BLAS* columns are "
        "ratios of medians (BLAS runs in its own blocks), each side resampled. Clock: on one thread "
        "the calling thread's CPU time (`time.thread_time`), since every single-threaded "
        "contender runs on it and the wall time of a long call on this loaded machine "
        "counts the other processes' time slices (a 4 ms BLAS GEMV took 121 ms of wall "
        "time); on two threads wall time, which carries that load.",
        "",
        "| size | batch | threads | kernel | ms repeated | ms flushed | floor ms flushed (read) "
        "| x BLAS flushed | / floor flushed | x BLAS repeated | / floor repeated |",
        "|---:|---:|---:|---|---:|---:|---|---|---|---:|---:|",
    ]
    for c in cases:
        best_t, best = c.best_blas(True)
        lines.append(
            f"| {c.size} | {c.batch} | {c.threads} | BLAS float32 (best: {best_t} thr.) "
            f"| {c.best_blas(False)[1].median_ms(False):.3f} | {best.median_ms(True):.3f} "
            "| | | | | |"
        )
        for n in kernels:
            read, floor = c.floor(n, True)
            lines.append(
                f"| {c.size} | {c.batch} | {c.threads} | {n} | {c.kernels[n].median_ms(False):.3f} "
                f"| {c.kernels[n].median_ms(True):.3f} | {floor.median_ms(True):.3f} ({read}) "
                f"| {_fmt(c.vs_blas(n, True), 1)} "
                f"| {_fmt(c.vs_floor(n, True), 2)} | {c.vs_blas(n, False)[0]:.1f} "
                f"| {c.vs_floor(n, False)[0]:.2f} |"
            )
    lines += [
        "",
        "Goals (4096 x 4096; the AVX2 goals are stated for an AVX2-only machine and measured "
        "here with the kernel forced):",
        "",
        *goals_markdown(goal_list),
        "",
        *_placement_lines(cases, kernels),
        "",
        *_ceiling_lines(cases, best_name),
        "",
        "Two-thread rows need two idle cores: where other processes hold the cores, each "
        "parallel region waits for its second thread to be scheduled, and those rows (and "
        "their goals) measure that wait, not the kernels; the one-thread rows, timed in "
        f"thread CPU time, do not carry it ({machine_load()} when this run ended).",
        "",
        "Bits per weight: every kernel reads 2-bit codes (`vnni16` layout for `vnni` and `avx2`, "
        "`rows32` for `portable`); float32 baseline 32. The table-lookup kernels are gone "
        "(slower than `portable` at every size; why, in `docs/edge.md`).",
    ]
    return "\n".join(lines)


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
