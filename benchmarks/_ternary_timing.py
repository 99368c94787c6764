"""How the ternary kernel benchmark times a call: the memory-floor reads (the kernel's own
packed bytes read once, plainly or with a software prefetch as far ahead as the kernels), the
cache flush before a flushed call, a timed call with its untimed warm-up, the samples of a
contender, the clock and one measured round (repeated calls in a block, then flushed calls
taking turns). The protocol is described in `benchmarks/ternary_kernels.py`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
from numba import njit, prange

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


def _words(stream: np.ndarray) -> np.ndarray:
    """The packed stream itself as 64-bit words (no copy): the floor reads the kernel's bytes."""
    flat = stream.reshape(-1)
    return flat[: flat.size - flat.size % 8].view(np.uint64)


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
def flush_caches(lines: np.ndarray) -> np.uint64:
    """Read one word of every 64-byte line of the buffer: every cached line is replaced by a
    clean one, as after a model's other layers were read (a written buffer would leave dirty
    lines whose write-back slows whichever call comes next)."""
    acc = np.uint64(0)
    for i in prange(lines.size // 8):
        acc += lines[i * 8]
    return acc


@dataclass
class Samples:
    """A contender's call times in seconds: back to back, and each after a flush."""

    repeated: list[float]
    flushed: list[float]

    def median_ms(self, flushed: bool) -> float:
        return float(np.median(self.flushed if flushed else self.repeated)) * 1e3

    def pick(self, flushed: bool) -> list[float]:
        return self.flushed if flushed else self.repeated


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
