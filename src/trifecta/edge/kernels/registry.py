"""The ternary-weight x int8-activation kernels, their layouts, and the choice among them.

Every kernel computes the exact int32 products `x_q @ W^T` of the reference. A kernel is
prepared once per weight matrix (its own layout, padded with zero weights to its block
multiples) and then called per batch of activations. `select_kernel` picks the fastest one
this CPU can run: `vnni` where AVX-512 VNNI exists, else `avx2` where AVX2 exists, else
`portable` (plain numba, runs everywhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from numpy.typing import NDArray

from trifecta.core.errors import InvalidInput, Unavailable
from trifecta.edge.kernels.avx2 import avx2_matmul_parallel, avx2_matmul_serial
from trifecta.edge.kernels.cpu import missing_features, pin_threads
from trifecta.edge.kernels.portable import (
    GROUP_ROWS,
    INPUT_MULTIPLE,
    portable_matmul_parallel,
    portable_matmul_serial,
    rows32_layout,
)
from trifecta.edge.kernels.vnni import (
    BLOCK_INPUTS,
    BLOCK_ROWS,
    PREFETCH_BYTES,
    vnni_layout,
    vnni_matmul_parallel,
    vnni_matmul_serial,
)

CACHE_LINE = 64
# Below this many weights a matrix runs on the calling thread: waking the pool costs more.
PARALLEL_MIN_WEIGHTS = 1 << 18


@dataclass(frozen=True)
class KernelSpec:
    name: str
    description: str
    bits_per_weight: float
    row_multiple: int
    col_multiple: int
    requires: tuple[str, ...]
    layout: Callable[[NDArray[np.int8]], NDArray[np.uint8]]
    parallel: Callable[..., None]
    serial: Callable[..., None]
    # Run large single-thread calls through the parallel entry on one numba thread. Numba
    # compiles the body of a parallel loop on its own, and for `portable` and `vnni` LLVM then
    # unrolls the inner loop with the partial sums in registers; the plain loop compiles to
    # code that keeps them in memory (portable 2x slower at 4096x4096; measured by
    # benchmarks/ternary_kernels.py).
    single_thread_via_parallel: bool = False
    # The prefetch distance is an argument of kernels outside vnni.py (their numba caches are
    # keyed on their own files, so a constant imported from vnni.py would go stale there);
    # vnni compiles its own constant in, which measured faster.
    takes_prefetch_distance: bool = True

    def unavailable_reason(self) -> str | None:
        missing = missing_features(self.requires)
        return f"this CPU lacks {', '.join(missing)}" if missing else None

    def prepare(self, values: NDArray[np.int8]) -> PreparedTernary:
        reason = self.unavailable_reason()
        if reason:
            raise Unavailable(f"kernel {self.name!r} cannot run here: {reason}", field="kernel")
        rows, cols = values.shape
        padded = np.zeros(
            (_round_up(rows, self.row_multiple), _round_up(cols, self.col_multiple)), np.int8
        )
        padded[:rows, :cols] = values
        stream = cache_line_aligned(self.layout(padded))
        return PreparedTernary(self, stream, rows, cols, *padded.shape)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def cache_line_aligned(stream: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A copy of the byte stream starting on a 64-byte boundary. numpy aligns to 16 bytes
    only, and a `vnni16` block that straddles two cache lines costs every 512-bit load two
    line reads (flushed 4096 GEMV, `vnni`: about 10% slower unaligned)."""
    buffer = np.empty(stream.size + CACHE_LINE, np.uint8)
    start = -buffer.ctypes.data % CACHE_LINE
    aligned = buffer[start : start + stream.size]
    aligned[:] = stream
    return aligned


class PreparedTernary:
    """One weight matrix in a kernel's layout, ready to multiply."""

    def __init__(
        self,
        spec: KernelSpec,
        stream: NDArray[np.uint8],
        rows: int,
        cols: int,
        padded_rows: int,
        padded_cols: int,
    ):
        self.spec = spec
        self.stream = stream
        self.rows, self.cols = rows, cols
        self.padded_rows, self.padded_cols = padded_rows, padded_cols

    @property
    def nbytes(self) -> int:
        return int(self.stream.nbytes)

    def matmul(self, x_q: NDArray[np.int8], threads: int = 1) -> NDArray[np.int32]:
        """(batch, cols) int8 -> (batch, rows) int32, exact."""
        call, out = self.bind(x_q, threads)
        call()
        return out

    def bind(
        self, x_q: NDArray[np.int8], threads: int = 1
    ) -> tuple[Callable[[], None], NDArray[np.int32]]:
        """Check and lay out the activations once; returns the bare kernel call and the view
        of its output it fills. Benchmarks time the call alone: after a cache flush the
        Python around a call adds about 90 us, half the kernel's own time at 4096x4096."""
        if x_q.ndim != 2 or x_q.shape[1] != self.cols or x_q.dtype != np.int8:
            raise InvalidInput(
                f"activations must be int8 (batch, {self.cols}), got {x_q.dtype} {x_q.shape}",
                field="x",
            )
        batch = x_q.shape[0]
        if self.padded_cols != self.cols:
            x = np.zeros((batch, self.padded_cols), np.int8)
            x[:, : self.cols] = x_q
        else:
            x = np.ascontiguousarray(x_q)
        out = np.empty(batch * self.padded_rows, np.int32)
        args = (
            self.stream,
            x.reshape(-1),
            out,
            batch,
            self.padded_rows,
            self.padded_cols,
        ) + ((PREFETCH_BYTES,) if self.spec.takes_prefetch_distance else ())
        view = out.reshape(batch, self.padded_rows)[:, : self.rows]
        large = self.rows * self.cols >= PARALLEL_MIN_WEIGHTS
        if large and (threads > 1 or self.spec.single_thread_via_parallel):
            pin_threads(threads)
            return partial(self.spec.parallel, *args), view
        return partial(self.spec.serial, *args), view


KERNELS: dict[str, KernelSpec] = {
    spec.name: spec
    for spec in (
        KernelSpec(
            "vnni",
            "AVX-512 VNNI vpdpbusd over the vnni16 layout (16 rows x 16 inputs per 64 bytes)",
            2.0,
            BLOCK_ROWS,
            BLOCK_INPUTS,
            ("avx512f", "avx512bw", "avx512vnni"),
            vnni_layout,
            vnni_matmul_parallel,
            vnni_matmul_serial,
            single_thread_via_parallel=True,
            takes_prefetch_distance=False,
        ),
        KernelSpec(
            "avx2",
            "AVX2 vpmaddubsw + vpmaddwd over the vnni16 layout (8 rows per 256-bit register)",
            2.0,
            BLOCK_ROWS,
            BLOCK_INPUTS,
            ("avx2",),
            vnni_layout,
            avx2_matmul_parallel,
            avx2_matmul_serial,
            single_thread_via_parallel=True,
        ),
        KernelSpec(
            "portable",
            "plain numba, 16-bit vector arithmetic over the rows32 layout",
            2.0,
            GROUP_ROWS,
            INPUT_MULTIPLE,
            (),
            rows32_layout,
            portable_matmul_parallel,
            portable_matmul_serial,
            single_thread_via_parallel=True,
        ),
    )
}
PREFERENCE = ("vnni", "avx2", "portable")


def available_kernels() -> dict[str, str | None]:
    """Every kernel with None when it runs here, else the reason it is skipped."""
    return {name: spec.unavailable_reason() for name, spec in KERNELS.items()}


def select_kernel(name: str | None = None) -> KernelSpec:
    """The named kernel, or the fastest one this CPU runs."""
    if name is not None and name != "auto":
        if name not in KERNELS:
            raise InvalidInput(
                f"unknown kernel {name!r}", field="kernel", allowed=[*KERNELS, "auto"]
            )
        return KERNELS[name]
    return next(KERNELS[n] for n in PREFERENCE if KERNELS[n].unavailable_reason() is None)
