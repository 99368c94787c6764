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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


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
