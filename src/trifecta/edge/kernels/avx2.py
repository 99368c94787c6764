"""The AVX2 kernel: ternary weights x int8 activations with `vpmaddubsw` / `vpmaddwd`.

For x86 CPUs with AVX2 but no AVX-512 VNNI (most x86 edge boxes, many servers). It reads
the same `vnni16` layout as the VNNI kernel (see `vnni.py`): each 64-byte block holds 16 rows
x 16 inputs, byte 4r + q packing, for row r, the 2-bit codes (w + 1) of inputs 16t + 4s + q
at bits 2s. A 256-bit register holds half a block (8 rows, one per 32-bit lane).

Inner loop for one token: for each field s, shift the half-block right by 2s and keep the low
two bits of every byte (the codes, 0..2); `vpmaddubsw` multiplies them by the broadcast signed
activations x[16t + 4s .. +3] and adds adjacent pairs into 16-bit lanes (|pair| <= 2 * 2 *
128 = 512, never saturating). The 16-bit partial sums of 8 blocks (|sum| <= 8 * 4 * 512 =
16384) are widened once by `vpmaddwd` against ones, which also adds the lane pairs, giving
per row sum(code * x) in int32; subtracting sum(x) gives sum(w * x). Several tokens (GEMM)
share the unpacking: each half-block's four fields are extracted once per group of 4 tokens.
This is the scheme of llama.cpp's and bitnet.cpp's AVX2 int8 dot products (`maddubs` then
`madd` with ones), written here because numba has no SIMD types of its own.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from trifecta.edge.kernels.vnni import (
    BLOCK_BYTES,
    BLOCK_INPUTS,
    BLOCK_ROWS,
    PREFETCH_BYTES,
    TOKEN_GROUP,
)
from trifecta.edge.kernels.ymm import (
    ymm_add,
    ymm_add16,
    ymm_and,
    ymm_broadcast4,
    ymm_load,
    ymm_madd16,
    ymm_maddubs,
    ymm_splat,
    ymm_srl,
    ymm_store,
    ymm_sub,
    ymm_zero,
)
from trifecta.edge.kernels.zmm import prefetch

HALF_BYTES = BLOCK_BYTES // 2  # 8 rows x 16 inputs
HALF_ROWS = BLOCK_ROWS // 2
CHUNK_BLOCKS = 8  # blocks summed in 16 bits before widening (bound in the module docstring)
_CODE_MASK = 0x03030303
_ONES16 = 0x00010001


@njit(cache=True, inline="always")
def _fields_dot(v, x, k, mask):
    """sum over the 4 fields of vpmaddubsw(codes of field s, x[k + 4s .. +3]), 16-bit lanes."""
    p = ymm_maddubs(ymm_and(v, mask), ymm_broadcast4(x, k))
    p = ymm_add16(p, ymm_maddubs(ymm_and(ymm_srl(v, 2), mask), ymm_broadcast4(x, k + 4)))
    q = ymm_maddubs(ymm_and(ymm_srl(v, 4), mask), ymm_broadcast4(x, k + 8))
    q = ymm_add16(q, ymm_maddubs(ymm_and(ymm_srl(v, 6), mask), ymm_broadcast4(x, k + 12)))
    return ymm_add16(p, q)


@njit(cache=True, inline="always")
def _gemv_block(w, x, x_offset, x_sum, out, out_offset, block, steps):
    """One group of 16 rows (two halves of 8) for one token."""
    mask, ones = ymm_splat(_CODE_MASK), ymm_splat(_ONES16)
    acc_lo = ymm_zero()
    acc_hi = ymm_zero()
    base = block * steps * BLOCK_BYTES
    for c0 in range(0, steps, CHUNK_BLOCKS):
        s_lo = ymm_zero()
        s_hi = ymm_zero()
        for t in range(c0, min(c0 + CHUNK_BLOCKS, steps)):
            at = base + t * BLOCK_BYTES
            k = x_offset + t * BLOCK_INPUTS
            prefetch(w, at + PREFETCH_BYTES)
            s_lo = ymm_add16(s_lo, _fields_dot(ymm_load(w, at), x, k, mask))
            s_hi = ymm_add16(s_hi, _fields_dot(ymm_load(w, at + HALF_BYTES), x, k, mask))
        acc_lo = ymm_add(acc_lo, ymm_madd16(s_lo, ones))
        acc_hi = ymm_add(acc_hi, ymm_madd16(s_hi, ones))
    row = out_offset + block * BLOCK_ROWS
    ymm_store(out, row, ymm_sub(acc_lo, ymm_splat(x_sum)))
    ymm_store(out, row + HALF_ROWS, ymm_sub(acc_hi, ymm_splat(x_sum)))


@njit(cache=True, inline="always")
def _gemm4_half(w, x, x_stride, x_sums, token, out, out_stride, block, half, steps):
    """One half-block row group (8 rows) for four tokens: each half-block's fields are
    extracted once and used four times."""
    mask, ones = ymm_splat(_CODE_MASK), ymm_splat(_ONES16)
    a = ymm_zero()
    b = ymm_zero()
    c = ymm_zero()
    d = ymm_zero()
    xa = token * x_stride
    xb = xa + x_stride
    xc = xb + x_stride
    xd = xc + x_stride
    base = block * steps * BLOCK_BYTES + half * HALF_BYTES
    for c0 in range(0, steps, CHUNK_BLOCKS):
        sa = ymm_zero()
        sb = ymm_zero()
        sc = ymm_zero()
        sd = ymm_zero()
        for t in range(c0, min(c0 + CHUNK_BLOCKS, steps)):
            prefetch(w, base + t * BLOCK_BYTES + PREFETCH_BYTES)
            v = ymm_load(w, base + t * BLOCK_BYTES)
            f0 = ymm_and(v, mask)
            f1 = ymm_and(ymm_srl(v, 2), mask)
            f2 = ymm_and(ymm_srl(v, 4), mask)
            f3 = ymm_and(ymm_srl(v, 6), mask)
            k = t * BLOCK_INPUTS
            sa = ymm_add16(sa, _four(f0, f1, f2, f3, x, xa + k))
            sb = ymm_add16(sb, _four(f0, f1, f2, f3, x, xb + k))
            sc = ymm_add16(sc, _four(f0, f1, f2, f3, x, xc + k))
            sd = ymm_add16(sd, _four(f0, f1, f2, f3, x, xd + k))
        a = ymm_add(a, ymm_madd16(sa, ones))
        b = ymm_add(b, ymm_madd16(sb, ones))
        c = ymm_add(c, ymm_madd16(sc, ones))
        d = ymm_add(d, ymm_madd16(sd, ones))
    row = block * BLOCK_ROWS + half * HALF_ROWS
    ymm_store(out, token * out_stride + row, ymm_sub(a, ymm_splat(x_sums[token])))
    ymm_store(out, (token + 1) * out_stride + row, ymm_sub(b, ymm_splat(x_sums[token + 1])))
    ymm_store(out, (token + 2) * out_stride + row, ymm_sub(c, ymm_splat(x_sums[token + 2])))
    ymm_store(out, (token + 3) * out_stride + row, ymm_sub(d, ymm_splat(x_sums[token + 3])))


@njit(cache=True, inline="always")
def _four(f0, f1, f2, f3, x, k):
    """The four fields of one half-block against one token's 16 activations at k."""
    p = ymm_add16(ymm_maddubs(f0, ymm_broadcast4(x, k)), ymm_maddubs(f1, ymm_broadcast4(x, k + 4)))
    q = ymm_add16(
        ymm_maddubs(f2, ymm_broadcast4(x, k + 8)), ymm_maddubs(f3, ymm_broadcast4(x, k + 12))
    )
    return ymm_add16(p, q)


@njit(cache=True, inline="always")
def _token_sums(x, batch, cols):
    sums = np.zeros(batch, np.int32)
    for token in range(batch):
        for i in range(token * cols, (token + 1) * cols):
            sums[token] += np.int32(x[i])
    return sums


@njit(cache=True, inline="always")
def _row_group(w, x, out, sums, batch, rows, cols, block):
    steps = cols // BLOCK_INPUTS
    grouped = batch - batch % TOKEN_GROUP
    for token in range(0, grouped, TOKEN_GROUP):
        _gemm4_half(w, x, cols, sums, token, out, rows, block, 0, steps)
        _gemm4_half(w, x, cols, sums, token, out, rows, block, 1, steps)
    for token in range(grouped, batch):
        _gemv_block(w, x, token * cols, sums[token], out, token * rows, block, steps)


@njit(cache=True, parallel=True)
def avx2_matmul_parallel(w, x, out, batch, rows, cols):
    """out (batch * rows) = ternary(w) @ x for x flattened (batch, cols); row groups split
    over the numba threads."""
    sums = _token_sums(x, batch, cols)
    for block in prange(rows // BLOCK_ROWS):
        _row_group(w, x, out, sums, batch, rows, cols, block)


@njit(cache=True)
def avx2_matmul_serial(w, x, out, batch, rows, cols):
    """As `avx2_matmul_parallel`, on the calling thread (small matrices)."""
    sums = _token_sums(x, batch, cols)
    for block in range(rows // BLOCK_ROWS):
        _row_group(w, x, out, sums, batch, rows, cols, block)
