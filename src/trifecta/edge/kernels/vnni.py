"""The SIMD kernel: ternary weights x int8 activations with AVX-512 VNNI `vpdpbusd`.

Weight layout (`vnni16`), designed so the inner loop is one contiguous stream with no
per-weight shifts: rows are taken 16 at a time (one per 32-bit lane) and inputs 16 at a time.
Each 64-byte block holds 16 rows x 16 inputs; byte 4r + q of block (b, t) packs, for row
16b + r, the codes of inputs 16t + 4s + q (s = 0..3) at bits 2s..2s+1. Blocks of one row
group follow each other, so a row group is one sequential read.

Inner loop for one token (GEMV): load 64 bytes; `and` with 0x03, 0x0C, 0x30, 0xC0 per byte
leaves code * 4^s in each byte (no shift needed); `vpdpbusd` multiplies those unsigned bytes
by the broadcast signed activations x[16t + 4s .. +3] into accumulator s. At the end
acc_0 + acc_1/4 + acc_2/16 + acc_3/64 (exact arithmetic shifts) is sum(code * x), and since
code = w + 1, subtracting sum(x) gives sum(w * x). Several tokens (GEMM) share the unpacking:
the codes are shifted down and masked once per block and reused for up to four tokens.
Intermediate products fit vpdpbusd's 16-bit products (at most 128 * 128); the int32 sums hold
K * 128 * 128 for K up to 2^17 inputs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

from trifecta.edge.kernels.zmm import (
    prefetch,
    zmm_add,
    zmm_and,
    zmm_broadcast4,
    zmm_dpbusd,
    zmm_load,
    zmm_splat,
    zmm_sra,
    zmm_store,
    zmm_sub,
    zmm_zero,
)

BLOCK_ROWS = 16
BLOCK_INPUTS = 16
BLOCK_BYTES = 64
TOKEN_GROUP = 4
# How far ahead of the loads the weight stream is prefetched: two 4 KB pages. Covering DRAM
# latency alone needs ~2 KB in flight (~15 GB/s x ~130 ns), but a prefetch into a new page
# first walks the page tables (nested in a VM), and one page of lead left that walk exposed.
# Flushed 4096 GEMV, paired with a plain read of the same bytes (load 16-26 on 2 cores):
# `avx2` 1.11-1.13x the floor at 8 KB against 1.21-1.24x at 4 KB; `vnni` 1.01-1.05x against
# 1.02-1.06x; 16 KB no better than 8 KB; 2 KB 5-10% slower. This kernel compiles the distance
# in: taken as an argument it ran 1.22-1.26x the floor against 1.05-1.10x (benchmarks/
# ternary_kernels.py, 4096 GEMV flushed, alternated with the constant, load 0.7). Its numba
# cache is keyed on this file, so a change here recompiles it; the avx2 and portable kernels
# live in other files and take the distance as an argument instead (the registry passes it).
PREFETCH_BYTES = 8192
# Per-byte masks that keep field s of every byte (as signed int32 words).
_MASK0, _MASK1, _MASK2, _MASK3 = 0x03030303, 0x0C0C0C0C, 0x30303030, -0x3F3F3F40  # 0xC0C0C0C0


def vnni_layout(values: NDArray[np.int8]) -> NDArray[np.uint8]:
    """Ternary matrix (N, K), N and K multiples of 16 -> the `vnni16` byte stream."""
    rows, cols = values.shape
    codes = (values.astype(np.int16) + 1).astype(np.uint8)
    codes = codes.reshape(
        rows // BLOCK_ROWS, BLOCK_ROWS, cols // BLOCK_INPUTS, 4, 4
    )  # b, r, t, s, q
    packed = (
        codes[:, :, :, 0]
        | (codes[:, :, :, 1] << 2)
        | (codes[:, :, :, 2] << 4)
        | (codes[:, :, :, 3] << 6)
    )
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3)).reshape(-1)  # b, t, r, q


@njit(cache=True, inline="always")
def _token_sum(x: NDArray[np.int8], start: int, length: int) -> np.int32:
    total = np.int32(0)
    for i in range(start, start + length):
        total += np.int32(x[i])
    return total


@njit(cache=True, inline="always")
def _combine(f0, f1, f2, f3, x_sum):
    """sum(code * x) from the four field accumulators (field s holds code * 4^s), minus
    sum(x): the ternary dot product."""
    scaled = zmm_add(zmm_add(f0, zmm_sra(f1, 2)), zmm_add(zmm_sra(f2, 4), zmm_sra(f3, 6)))
    return zmm_sub(scaled, zmm_splat(x_sum))


@njit(cache=True, inline="always")
def _gemv_block(w, x, x_offset, x_sum, out, out_offset, block, steps):
    """One group of 16 rows for one token; two blocks per iteration keep 8 accumulators in
    flight to cover vpdpbusd's latency."""
    m0, m1, m2, m3 = zmm_splat(_MASK0), zmm_splat(_MASK1), zmm_splat(_MASK2), zmm_splat(_MASK3)
    a0 = zmm_zero()
    a1 = zmm_zero()
    a2 = zmm_zero()
    a3 = zmm_zero()
    b0 = zmm_zero()
    b1 = zmm_zero()
    b2 = zmm_zero()
    b3 = zmm_zero()
    base = block * steps * BLOCK_BYTES
    pairs = steps // 2
    for p in range(pairs):
        at = base + 2 * p * BLOCK_BYTES
        k = x_offset + 2 * p * BLOCK_INPUTS
        prefetch(w, at + PREFETCH_BYTES)
        prefetch(w, at + PREFETCH_BYTES + BLOCK_BYTES)
        v = zmm_load(w, at)
        u = zmm_load(w, at + BLOCK_BYTES)
        a0 = zmm_dpbusd(a0, zmm_and(v, m0), zmm_broadcast4(x, k))
        a1 = zmm_dpbusd(a1, zmm_and(v, m1), zmm_broadcast4(x, k + 4))
        a2 = zmm_dpbusd(a2, zmm_and(v, m2), zmm_broadcast4(x, k + 8))
        a3 = zmm_dpbusd(a3, zmm_and(v, m3), zmm_broadcast4(x, k + 12))
        b0 = zmm_dpbusd(b0, zmm_and(u, m0), zmm_broadcast4(x, k + 16))
        b1 = zmm_dpbusd(b1, zmm_and(u, m1), zmm_broadcast4(x, k + 20))
        b2 = zmm_dpbusd(b2, zmm_and(u, m2), zmm_broadcast4(x, k + 24))
        b3 = zmm_dpbusd(b3, zmm_and(u, m3), zmm_broadcast4(x, k + 28))
    if steps % 2:
        at = base + (steps - 1) * BLOCK_BYTES
        k = x_offset + (steps - 1) * BLOCK_INPUTS
        v = zmm_load(w, at)
        a0 = zmm_dpbusd(a0, zmm_and(v, m0), zmm_broadcast4(x, k))
        a1 = zmm_dpbusd(a1, zmm_and(v, m1), zmm_broadcast4(x, k + 4))
        a2 = zmm_dpbusd(a2, zmm_and(v, m2), zmm_broadcast4(x, k + 8))
        a3 = zmm_dpbusd(a3, zmm_and(v, m3), zmm_broadcast4(x, k + 12))
    total = _combine(zmm_add(a0, b0), zmm_add(a1, b1), zmm_add(a2, b2), zmm_add(a3, b3), x_sum)
    zmm_store(out, out_offset + block * BLOCK_ROWS, total)


@njit(cache=True, inline="always")
def _gemm4_block(w, x, x_stride, x_sums, token, out, out_stride, block, steps):
    """One group of 16 rows for four tokens: each block is masked once and used four times;
    sixteen independent accumulators (token x field) keep vpdpbusd's pipeline full."""
    m0, m1, m2, m3 = zmm_splat(_MASK0), zmm_splat(_MASK1), zmm_splat(_MASK2), zmm_splat(_MASK3)
    a0 = zmm_zero()
    a1 = zmm_zero()
    a2 = zmm_zero()
    a3 = zmm_zero()
    b0 = zmm_zero()
    b1 = zmm_zero()
    b2 = zmm_zero()
    b3 = zmm_zero()
    c0 = zmm_zero()
    c1 = zmm_zero()
    c2 = zmm_zero()
    c3 = zmm_zero()
    d0 = zmm_zero()
    d1 = zmm_zero()
    d2 = zmm_zero()
    d3 = zmm_zero()
    xa = token * x_stride
    xb = xa + x_stride
    xc = xb + x_stride
    xd = xc + x_stride
    base = block * steps * BLOCK_BYTES
    for t in range(steps):
        prefetch(w, base + t * BLOCK_BYTES + PREFETCH_BYTES)
        v = zmm_load(w, base + t * BLOCK_BYTES)
        f0 = zmm_and(v, m0)
        f1 = zmm_and(v, m1)
        f2 = zmm_and(v, m2)
        f3 = zmm_and(v, m3)
        k = t * BLOCK_INPUTS
        a0 = zmm_dpbusd(a0, f0, zmm_broadcast4(x, xa + k))
        a1 = zmm_dpbusd(a1, f1, zmm_broadcast4(x, xa + k + 4))
        a2 = zmm_dpbusd(a2, f2, zmm_broadcast4(x, xa + k + 8))
        a3 = zmm_dpbusd(a3, f3, zmm_broadcast4(x, xa + k + 12))
        b0 = zmm_dpbusd(b0, f0, zmm_broadcast4(x, xb + k))
        b1 = zmm_dpbusd(b1, f1, zmm_broadcast4(x, xb + k + 4))
        b2 = zmm_dpbusd(b2, f2, zmm_broadcast4(x, xb + k + 8))
        b3 = zmm_dpbusd(b3, f3, zmm_broadcast4(x, xb + k + 12))
        c0 = zmm_dpbusd(c0, f0, zmm_broadcast4(x, xc + k))
        c1 = zmm_dpbusd(c1, f1, zmm_broadcast4(x, xc + k + 4))
        c2 = zmm_dpbusd(c2, f2, zmm_broadcast4(x, xc + k + 8))
        c3 = zmm_dpbusd(c3, f3, zmm_broadcast4(x, xc + k + 12))
        d0 = zmm_dpbusd(d0, f0, zmm_broadcast4(x, xd + k))
        d1 = zmm_dpbusd(d1, f1, zmm_broadcast4(x, xd + k + 4))
        d2 = zmm_dpbusd(d2, f2, zmm_broadcast4(x, xd + k + 8))
        d3 = zmm_dpbusd(d3, f3, zmm_broadcast4(x, xd + k + 12))
    row = block * BLOCK_ROWS
    zmm_store(out, token * out_stride + row, _combine(a0, a1, a2, a3, x_sums[token]))
    zmm_store(out, (token + 1) * out_stride + row, _combine(b0, b1, b2, b3, x_sums[token + 1]))
    zmm_store(out, (token + 2) * out_stride + row, _combine(c0, c1, c2, c3, x_sums[token + 2]))
    zmm_store(out, (token + 3) * out_stride + row, _combine(d0, d1, d2, d3, x_sums[token + 3]))


@njit(cache=True, inline="always")
def _token_sums(x, batch, cols):
    sums = np.empty(batch, np.int32)
    for token in range(batch):
        sums[token] = _token_sum(x, token * cols, cols)
    return sums


@njit(cache=True, inline="always")
def _row_group(w, x, out, sums, batch, rows, cols, block):
    steps = cols // BLOCK_INPUTS
    grouped = batch - batch % TOKEN_GROUP
    for token in range(0, grouped, TOKEN_GROUP):
        _gemm4_block(w, x, cols, sums, token, out, rows, block, steps)
    for token in range(grouped, batch):
        _gemv_block(w, x, token * cols, sums[token], out, token * rows, block, steps)


@njit(cache=True, parallel=True)
def vnni_matmul_parallel(w, x, out, batch, rows, cols):
    """out (batch * rows) = ternary(w) @ x for x flattened (batch, cols); row groups split
    over the numba threads."""
    sums = _token_sums(x, batch, cols)
    for block in prange(rows // BLOCK_ROWS):
        _row_group(w, x, out, sums, batch, rows, cols, block)


@njit(cache=True)
def vnni_matmul_serial(w, x, out, batch, rows, cols):
    """As `vnni_matmul_parallel`, on the calling thread (small matrices)."""
    sums = _token_sums(x, batch, cols)
    for block in range(rows // BLOCK_ROWS):
        _row_group(w, x, out, sums, batch, rows, cols, block)
