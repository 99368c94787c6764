"""CPU feature detection and thread pinning for the ternary kernels.

Features come from LLVM's view of the host (`llvmlite`), the same view numba compiles for,
so a kernel is only chosen where its instructions will be emitted and run.

Threads: the kernels run on numba's thread pool and the runtime's few float matrix products
on BLAS. Both pools default to one thread per core, and on a small machine they would
oversubscribe the cores and stall each other; `pin_threads` fixes numba's count (numba's
setting is per calling thread) and caps BLAS through `threadpoolctl`.
"""

from __future__ import annotations

from functools import lru_cache

import numba
from llvmlite import binding as llvm
from threadpoolctl import threadpool_limits


@lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    return frozenset(name for name, enabled in llvm.get_host_cpu_features().items() if enabled)


def host_cpu() -> str:
    return str(llvm.get_host_cpu_name())


def missing_features(required: tuple[str, ...]) -> tuple[str, ...]:
    have = host_features()
    return tuple(f for f in required if f not in have)


def max_threads() -> int:
    configured: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # set at import
    return configured


def pin_threads(kernel_threads: int, blas_threads: int = 1) -> int:
    """Use `kernel_threads` numba threads on this thread and at most `blas_threads` BLAS
    threads process-wide; returns the numba thread count in effect."""
    threads = max(1, min(kernel_threads, max_threads()))
    numba.set_num_threads(threads)
    _limit_blas(blas_threads)
    return threads


@lru_cache(maxsize=8)
def _limit_blas(threads: int) -> None:
    """Cap BLAS once per setting: `threadpool_limits` scans the loaded libraries (about a
    millisecond), which at every call cost ten times a 4096x4096 ternary GEMV."""
    threadpool_limits(limits=threads, user_api="blas")
