"""The AVX2 kernel: ternary weights x int8 activations with `vpmaddubsw` / `vpmaddwd`.

For x86 CPUs with AVX2 but no AVX-512 VNNI (most x86 edge boxes, many servers). It reads
the same `vnni16` layout as the VNNI kernel (see `vnni.py`): each 64-byte block holds 16 rows
x 16 inputs, byte 4r + q packing, for row r, the 2-bit codes (w + 1) of inputs 16t + 4s + q
at bits 2s. A 256-bit register holds half a block (8 rows, one per 32-bit lane).

Inner loop for one token, per half-block v: one shift, h = v >> 4, brings fields 2 and 3
down to where fields 0 and 1 sit; masking v and h with 0x03 and 0x0C per byte gives the
codes of fields 0 and 2 (0..2) and four times those of fields 1 and 3 (0..8), with no
further shifts (the three shifts of a shift-per-field unpacking cost about 10% at 4096).
`vpmaddubsw` multiplies each by the broadcast signed activations x[16t + 4s .. +3] and adds
adjacent pairs into 16-bit lanes; fields 0 and 2 go to one 16-bit sum (|pair| <= 2 * 2 * 128
= 512 per field), fields 1 and 3, scaled by 4, to another (|pair| <= 2 * 8 * 128 = 2048).
Over a chunk of 8 blocks these reach at most 8,192 and exactly 32,768 (`-32768` when every
code is 2 and every activation -128, still an int16; the positive bound is 32,512), so they
never overflow. Each chunk is widened by `vpmaddwd` (which also adds the lane pairs) against
4s and 1s respectively, giving 4 * sum(code * x) in int32; one exact arithmetic shift by 2
and subtracting sum(x) give sum(w * x). Several tokens (GEMM) share the unpacking: each
half-block's four fields are extracted once per group of 4 tokens.

This is the scheme of llama.cpp's and bitnet.cpp's AVX2 int8 dot products (`maddubs` then
`madd`), written here because numba has no SIMD types of its own.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from trifecta.edge.kernels.vnni import (
    BLOCK_BYTES,
    BLOCK_INPUTS,
    BLOCK_ROWS,
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
    ymm_sra,
    ymm_srl,
    ymm_store,
    ymm_sub,
    ymm_zero,
)
from trifecta.edge.kernels.zmm import prefetch

HALF_BYTES = BLOCK_BYTES // 2  # 8 rows x 16 inputs
HALF_ROWS = BLOCK_ROWS // 2
CHUNK_BLOCKS = 8  # blocks summed in 16 bits before widening (bound in the module docstring)
_LOW_FIELD = 0x03030303  # per byte: the field in bits 0-1 (code)
_HIGH_FIELD = 0x0C0C0C0C  # per byte: the field in bits 2-3 (code * 4)
_ONES16 = 0x00010001
_FOURS16 = 0x00040004


@njit(cache=True, inline="always")
def _pair(low, high, x, k):
    """vpmaddubsw of two fields against x[k .. k + 3] and x[k + 8 .. k + 11], summed in
    16-bit lanes: `low` is a field of the bytes, `high` the same field of the bytes >> 4."""
    return ymm_add16(
        ymm_maddubs(low, ymm_broadcast4(x, k)), ymm_maddubs(high, ymm_broadcast4(x, k + 8))
    )


@njit(cache=True, inline="always")
def _widen(acc, even, odd, ones, fours):
    """acc + 4 x (fields 0 + 2) + (4 x (fields 1 + 3)), widened to int32 by vpmaddwd: four
    times sum(code * x) accumulates."""
    return ymm_add(acc, ymm_add(ymm_madd16(even, fours), ymm_madd16(odd, ones)))


@njit(cache=True, inline="always")
def _finish(acc4, x_sum):
    """sum(w * x) = sum(code * x) - sum(x) from four times sum(code * x) (an exact shift)."""
    return ymm_sub(ymm_sra(acc4, 2), ymm_splat(x_sum))


@njit(cache=True, inline="always")
def _gemv_chunk(w, x, base, x_offset, first, count, acc_lo, acc_hi, ahead):
    """Blocks first .. first + count of a row group for one token, summed in 16 bits (per
    half: fields 0 + 2 and fields 1 + 3) and then widened into the int32 accumulators.
    Called with count = CHUNK_BLOCKS, a constant, the loop is unrolled in full (about 10%
    fewer instructions at 4096)."""
    low_field, high_field = ymm_splat(_LOW_FIELD), ymm_splat(_HIGH_FIELD)
    lo_even = ymm_zero()
    lo_odd = ymm_zero()
    hi_even = ymm_zero()
    hi_odd = ymm_zero()
    for j in range(count):
        at = base + (first + j) * BLOCK_BYTES
        k = x_offset + (first + j) * BLOCK_INPUTS
        prefetch(w, at + ahead)
        v = ymm_load(w, at)
        h = ymm_srl(v, 4)
        lo_even = ymm_add16(lo_even, _pair(ymm_and(v, low_field), ymm_and(h, low_field), x, k))
        lo_odd = ymm_add16(lo_odd, _pair(ymm_and(v, high_field), ymm_and(h, high_field), x, k + 4))
        v = ymm_load(w, at + HALF_BYTES)
        h = ymm_srl(v, 4)
        hi_even = ymm_add16(hi_even, _pair(ymm_and(v, low_field), ymm_and(h, low_field), x, k))
        hi_odd = ymm_add16(hi_odd, _pair(ymm_and(v, high_field), ymm_and(h, high_field), x, k + 4))
    ones, fours = ymm_splat(_ONES16), ymm_splat(_FOURS16)
    return _widen(acc_lo, lo_even, lo_odd, ones, fours), _widen(
        acc_hi, hi_even, hi_odd, ones, fours
    )


@njit(cache=True, inline="always")
def _gemv_block(w, x, x_offset, x_sum, out, out_offset, block, steps, ahead):
    """One group of 16 rows (two halves of 8) for one token."""
    acc_lo = ymm_zero()
    acc_hi = ymm_zero()
    base = block * steps * BLOCK_BYTES
    full = steps - steps % CHUNK_BLOCKS
    for first in range(0, full, CHUNK_BLOCKS):
        acc_lo, acc_hi = _gemv_chunk(
            w, x, base, x_offset, first, CHUNK_BLOCKS, acc_lo, acc_hi, ahead
        )
    acc_lo, acc_hi = _gemv_chunk(w, x, base, x_offset, full, steps - full, acc_lo, acc_hi, ahead)
    row = out_offset + block * BLOCK_ROWS
    ymm_store(out, row, _finish(acc_lo, x_sum))
    ymm_store(out, row + HALF_ROWS, _finish(acc_hi, x_sum))


@njit(cache=True, inline="always")
def _gemm4_chunk(w, x, x_stride, token, base, first, count, a, b, c, d, ahead):
    """Blocks first .. first + count of one half-block row group (8 rows) for four tokens:
    each half-block's fields are extracted once and used four times (eight 16-bit sums:
    token x {fields 0 + 2, fields 1 + 3}), then widened into the int32 accumulators."""
    low_field, high_field = ymm_splat(_LOW_FIELD), ymm_splat(_HIGH_FIELD)
    xa = token * x_stride
    xb = xa + x_stride
    xc = xb + x_stride
    xd = xc + x_stride
    a_even = ymm_zero()
    a_odd = ymm_zero()
    b_even = ymm_zero()
    b_odd = ymm_zero()
    c_even = ymm_zero()
    c_odd = ymm_zero()
    d_even = ymm_zero()
    d_odd = ymm_zero()
    for j in range(count):
        at = base + (first + j) * BLOCK_BYTES
        prefetch(w, at + ahead)
        v = ymm_load(w, at)
        h = ymm_srl(v, 4)
        f0 = ymm_and(v, low_field)
        f1 = ymm_and(v, high_field)  # 4 x code
        f2 = ymm_and(h, low_field)
        f3 = ymm_and(h, high_field)  # 4 x code
        k = (first + j) * BLOCK_INPUTS
        a_even = ymm_add16(a_even, _pair(f0, f2, x, xa + k))
        a_odd = ymm_add16(a_odd, _pair(f1, f3, x, xa + k + 4))
        b_even = ymm_add16(b_even, _pair(f0, f2, x, xb + k))
        b_odd = ymm_add16(b_odd, _pair(f1, f3, x, xb + k + 4))
        c_even = ymm_add16(c_even, _pair(f0, f2, x, xc + k))
        c_odd = ymm_add16(c_odd, _pair(f1, f3, x, xc + k + 4))
        d_even = ymm_add16(d_even, _pair(f0, f2, x, xd + k))
        d_odd = ymm_add16(d_odd, _pair(f1, f3, x, xd + k + 4))
    ones, fours = ymm_splat(_ONES16), ymm_splat(_FOURS16)
    return (
        _widen(a, a_even, a_odd, ones, fours),
        _widen(b, b_even, b_odd, ones, fours),
        _widen(c, c_even, c_odd, ones, fours),
        _widen(d, d_even, d_odd, ones, fours),
    )


@njit(cache=True, inline="always")
def _gemm4_half(w, x, x_stride, x_sums, token, out, out_stride, block, half, steps, ahead):
    """One half-block row group (8 rows) for four tokens."""
    a = ymm_zero()
    b = ymm_zero()
    c = ymm_zero()
    d = ymm_zero()
    base = block * steps * BLOCK_BYTES + half * HALF_BYTES
    full = steps - steps % CHUNK_BLOCKS
    for first in range(0, full, CHUNK_BLOCKS):
        a, b, c, d = _gemm4_chunk(
            w, x, x_stride, token, base, first, CHUNK_BLOCKS, a, b, c, d, ahead
        )
    a, b, c, d = _gemm4_chunk(w, x, x_stride, token, base, full, steps - full, a, b, c, d, ahead)
    row = block * BLOCK_ROWS + half * HALF_ROWS
    ymm_store(out, token * out_stride + row, _finish(a, x_sums[token]))
    ymm_store(out, (token + 1) * out_stride + row, _finish(b, x_sums[token + 1]))
    ymm_store(out, (token + 2) * out_stride + row, _finish(c, x_sums[token + 2]))
    ymm_store(out, (token + 3) * out_stride + row, _finish(d, x_sums[token + 3]))


@njit(cache=True, inline="always")
def _token_sums(x, batch, cols):
    sums = np.zeros(batch, np.int32)
    for token in range(batch):
        for i in range(token * cols, (token + 1) * cols):
            sums[token] += np.int32(x[i])
    return sums


@njit(cache=True, inline="always")
def _row_group(w, x, out, sums, batch, rows, cols, block, ahead):
    steps = cols // BLOCK_INPUTS
    grouped = batch - batch % TOKEN_GROUP
    for token in range(0, grouped, TOKEN_GROUP):
        _gemm4_half(w, x, cols, sums, token, out, rows, block, 0, steps, ahead)
        _gemm4_half(w, x, cols, sums, token, out, rows, block, 1, steps, ahead)
    for token in range(grouped, batch):
        _gemv_block(w, x, token * cols, sums[token], out, token * rows, block, steps, ahead)


@njit(cache=True, parallel=True)
def avx2_matmul_parallel(w, x, out, batch, rows, cols, ahead):
    """out (batch * rows) = ternary(w) @ x for x flattened (batch, cols); row groups split
    over the numba threads; the weight stream is prefetched `ahead` bytes ahead."""
    sums = _token_sums(x, batch, cols)
    for block in prange(rows // BLOCK_ROWS):
        _row_group(w, x, out, sums, batch, rows, cols, block, ahead)


@njit(cache=True)
def avx2_matmul_serial(w, x, out, batch, rows, cols, ahead):
    """As `avx2_matmul_parallel`, on the calling thread (small matrices)."""
    sums = _token_sums(x, batch, cols)
    for block in range(rows // BLOCK_ROWS):
        _row_group(w, x, out, sums, batch, rows, cols, block, ahead)
