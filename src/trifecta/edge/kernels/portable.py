"""The portable kernel: plain numba, no CPU-specific instruction in the source.

Weight layout (`rows32`): rows in groups of 32, inputs in quads. Byte (g, q, l) of the flat
stream holds, for row 32g + l, the 2-bit codes (w + 1) of inputs 4q..4q+3 at bits 2i. The
inner loop runs over the 32 rows of a group with the quad's four activations fixed, which
LLVM turns into 16-bit vector arithmetic on whatever SIMD width the machine has (32 lanes
with AVX-512, 16 with AVX2, 8 with NEON). Products code * x fit 16 bits and 16 quads
(64 products, |sum| <= 64 * 256) fit a 16-bit partial sum, which is then widened to int32.
Indices are unsigned so numba emits no negative-index wrap-around in the inner loop. The
weight stream is prefetched ahead (`llvm.prefetch`, which LLVM lowers on every target: a
prefetch instruction where there is one, nothing elsewhere).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64
from numpy.typing import NDArray

from trifecta.edge.kernels.zmm import prefetch

GROUP_ROWS = 32
QUADS_PER_PARTIAL = 16  # 64 inputs per 16-bit partial sum
INPUT_MULTIPLE = 4 * QUADS_PER_PARTIAL


def rows32_layout(values: NDArray[np.int8]) -> NDArray[np.uint8]:
    """Ternary matrix (N, K), N a multiple of 32 and K of 64 -> the `rows32` byte stream."""
    rows, cols = values.shape
    codes = (
        (values.astype(np.int16) + 1)
        .astype(np.uint8)
        .reshape(rows // GROUP_ROWS, GROUP_ROWS, cols // 4, 4)
    )
    packed = codes[..., 0] | (codes[..., 1] << 2) | (codes[..., 2] << 4) | (codes[..., 3] << 6)
    return np.ascontiguousarray(packed.transpose(0, 2, 1)).reshape(-1)


@njit(cache=True, inline="always")
def _group(w, x16, x_offset, x_sum, out, out_offset, group, quads, ahead):
    acc = np.zeros(GROUP_ROWS, np.int32)
    partial = np.zeros(GROUP_ROWS, np.int16)
    base = uint64(group) * uint64(quads) * uint64(GROUP_ROWS)
    for q0 in range(0, quads, QUADS_PER_PARTIAL):
        for lane in range(GROUP_ROWS):
            partial[lane] = 0
        for dq in range(QUADS_PER_PARTIAL):
            quad = uint64(q0 + dq)
            k = uint64(x_offset) + uint64(4) * quad
            x0 = x16[k]
            x1 = x16[k + uint64(1)]
            x2 = x16[k + uint64(2)]
            x3 = x16[k + uint64(3)]
            at = base + quad * uint64(GROUP_ROWS)
            prefetch(w, at + uint64(ahead))  # a hint: no fault past the end
            for lane in range(GROUP_ROWS):
                c = np.int16(w[at + uint64(lane)])
                partial[lane] += (
                    (c & 3) * x0 + ((c >> 2) & 3) * x1 + ((c >> 4) & 3) * x2 + (c >> 6) * x3
                )
        for lane in range(GROUP_ROWS):
            acc[lane] += partial[lane]
    for lane in range(GROUP_ROWS):
        out[out_offset + group * GROUP_ROWS + lane] = acc[lane] - x_sum


@njit(cache=True, inline="always")
def _prologue(x, batch, cols):
    sums = np.zeros(batch, np.int32)
    for token in range(batch):
        for i in range(token * cols, (token + 1) * cols):
            sums[token] += x[i]
    return x.astype(np.int16), sums


@njit(cache=True, parallel=True)
def portable_matmul_parallel(w, x, out, batch, rows, cols, ahead):
    """out (batch * rows) = ternary(w) @ x for x flattened (batch, cols); groups over threads,
    the weight stream prefetched `ahead` bytes ahead."""
    x16, sums = _prologue(x, batch, cols)
    for group in prange(rows // GROUP_ROWS):
        for token in range(batch):
            _group(w, x16, token * cols, sums[token], out, token * rows, group, cols // 4, ahead)


@njit(cache=True)
def portable_matmul_serial(w, x, out, batch, rows, cols, ahead):
    x16, sums = _prologue(x, batch, cols)
    for group in range(rows // GROUP_ROWS):
        for token in range(batch):
            _group(w, x16, token * cols, sums[token], out, token * rows, group, cols // 4, ahead)
