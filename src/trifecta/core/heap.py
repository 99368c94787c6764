"""Keep the garbage collector's full collections off the request path of a long-lived server.

A serving process holds a few hundred thousand long-lived objects (torch, transformers, the
models, the app) before it takes its first request. Python's full (generation 2) collections
walk all of them: measured in `benchmarks/serving.py`, one took 250-400 ms, stalling every
request in the batch at once, and that, not scheduling, was the quiet capsules' p99.
`gc.freeze()` (Python 3.7+) moves everything alive at start-up to a permanent generation that
collections skip; objects created while serving are still collected as usual.

`cap_malloc_arenas` bounds glibc's malloc arenas. glibc gives each thread that contends for
the heap an arena of its own, up to eight per core; a server's thread pool (forty threads)
then spreads short-lived request objects over many arenas, and the fragments each keeps grew
`trifecta serve`'s resident memory by about 0.35 MB per request in a soak
(tests/reliability/test_load_and_soak.py), two thirds of its growth.

`bound_native_caches` bounds three caches of the native libraries under torch, each kept per
process or per thread for speed and never shrunk. oneDNN (bfloat16 matrix products, as the
learning worker's embedder runs under autocast, and some element-wise kernels) JIT-compiles
kernels per input shape and keeps up to 1,024 of them; torch's bfloat16 matrix product goes
through ideep, which keeps its own cache of prepared products per shape (`LRU_CACHE_CAPACITY`,
1,024 by default) that oneDNN's bound does not reach. Measured on an AMX Xeon (issue 16):
a new (m, 384) x (384, 1536) shape kept about 0.30 MB in oneDNN's cache and 0.27 MB in
ideep's, so 64 shapes of the embedder's (7 batch sizes x 9 lengths) could hold tens of MB.
Both are bounded to the embedder's hot shapes; a miss recompiles in 0.1-0.5 ms, against
5 ms or more for a forward, and the learning worker's embedding showed no slowdown at 32.
The serving engine's float32 Llama forwards never reach oneDNN (MKL runs them: counted with
`ONEDNN_VERBOSE=profile_create`, a 150 s soak created 20 primitives, all the embedder's).
These bounds did not flatten the soak's slope (RELIABILITY.md): these caches are not what
keeps growing.
MKL (float32 matrix products) keeps a memory pool per thread, sized by the largest product
the thread has run: with the oneDNN cache bounded, memray found MKL's pools holding 48 of
the 55 MB a soak's second half kept, on three threads; a server's pool has forty, and each
new large batch on a new thread added ~100 MB in a probe. Without the pool MKL calls malloc
and free (Intel documents the cost as small problems running somewhat slower; the
embedder's calls showed no difference here within the machine's noise). The libraries read
their variables once, at their first call, and torch exposes no setter: a server sets them
at start-up; an operator's own values win.

`start_malloc_trimmer` hands glibc's free pages back to the kernel every few seconds. A
request allocates and frees many short-lived native buffers (tensors, SQLite pages, HTTP
bodies); glibc returns freed memory at the top of its main heap only, so a long-lived block
above freed ones keeps them resident. `malloc_trim(0)` (glibc 2.8+) releases free pages
anywhere in the heap: in a soak it gave back 24 of the second half's 57 MB. The trimmer
counts its trims, their time and what each gave back (`TRIMS`), which the sizes report
writes, so a soak says what trimming costs and returns at the defaults.

How each of these was found, and how to look for the next: `core/heap_report.py` (the
memory readers and the server's debug heap report) and `benchmarks/soak.py`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
# Entries each cache keeps (about 0.3 MB each for the embedder's products, so about 20 MB
# for both at most): the embedder's hot shapes (about 20 primitives in a 150 s soak, counted).
ONEDNN_CACHE_PRIMITIVES = 32
IDEEP_CACHE_ENTRIES = 32
TRIM_INTERVAL_S = 10.0
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass
class TrimStats:
    """What the trimmer did in this process: trims made, the seconds they took, and the
    anonymous resident memory each gave back (before minus after, summed; other threads
    allocate meanwhile, so a single trim's figure is noisy, the sum over many is not)."""

    trims: int = 0
    seconds: float = 0.0
    returned_mb: float = 0.0


TRIMS = TrimStats()  # the sizes report (core/heap_report.py) writes it beside glibc's figures


def anonymous_resident_mb() -> float:
    """This process's RssAnon from /proc/self/statm (resident pages minus the file-backed and
    shared ones; one short read, cheap enough to take around every trim)."""
    fields = Path("/proc/self/statm").read_text().split()
    return (int(fields[1]) - int(fields[2])) * PAGE_BYTES / 2**20


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from future collections; returns how
    many objects were frozen. Call when the server is loaded, before it takes requests."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does). Call first thing in a serving
    process, before any other thread allocates: glibc fixes the limit when the first extra
    arena is made. False where the C library is not glibc (nothing is changed)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt is not None and mallopt(M_ARENA_MAX, arenas) == 1)


def bound_native_caches(
    onednn_primitives: int = ONEDNN_CACHE_PRIMITIVES, ideep_entries: int = IDEEP_CACHE_ENTRIES
) -> dict[str, str]:
    """Bound oneDNN's primitive cache and ideep's, and turn off MKL's per-thread memory pools,
    unless the environment already says otherwise; returns the settings in effect. Call
    before torch runs its first kernel (the libraries read their variables once)."""
    wanted = {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(onednn_primitives),
        "LRU_CACHE_CAPACITY": str(ideep_entries),  # ideep's name for its cache's bound
        "MKL_DISABLE_FAST_MM": "1",
    }
    return {name: os.environ.setdefault(name, value) for name, value in wanted.items()}


def start_malloc_trimmer(interval_s: float = TRIM_INTERVAL_S) -> threading.Event | None:
    """Call glibc's `malloc_trim(0)` every `interval_s` seconds on a daemon thread; returns an
    event that stops it when set, or None where the C library has no malloc_trim."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval_s):
            before, started = anonymous_resident_mb(), time.perf_counter()
            trim(0)  # releases the GIL (a foreign call): requests keep running meanwhile
            TRIMS.seconds += time.perf_counter() - started
            TRIMS.returned_mb += before - anonymous_resident_mb()
            TRIMS.trims += 1

    threading.Thread(target=run, name="malloc-trim", daemon=True).start()
    return stop
