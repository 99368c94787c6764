"""Lookup-table kernels, in the spirit of bitnet.cpp's TL kernels: no multiplications.

A group of g ternary weights has 3^g possible values, so for a given activation vector every
possible partial dot product of a group can be tabulated once per token; each packed byte of
the weight matrix is then an index into its group's table. Two variants share the code:

- `lut-i2`: the 2-bit layout, a group is the 4 weights of one byte; tables of 256 entries
  (codes of 3 never occur). 2 bits per weight.
- `lut-b3`: the base-3 layout, a group is the 5 weights of one byte; tables of 243 entries.
  1.6 bits per weight, and 20% fewer lookups than `lut-i2`.

Tables hold int16 (|entry| <= 5 * 128). They are built by combining two smaller tables
(low and high weights of the group), so building costs one add per entry. The weight bytes
are stored column-major (group, row) so that the loop over rows reads one table, which stays
in L1, and a contiguous run of weight bytes. Plain numba, no CPU-specific instructions.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

from trifecta.edge.packing import Layout, pack

ROW_CHUNK = 512  # rows per parallel task (the chunk's int32 accumulators stay in L1)
TABLE_SIZE = {"i2": 256, "b3": 243}


def lut_layout(values: NDArray[np.int8], layout: Layout) -> NDArray[np.uint8]:
    """Ternary matrix (N, K) -> its packed bytes (layout `i2` or `b3`), column-major (groups, N)."""
    return np.ascontiguousarray(pack(values, layout).T)


@njit(cache=True, inline="always")
def _i2_tables(x, offset, groups):
    tables = np.empty((groups, 256), np.int16)
    low = np.empty(16, np.int16)
    high = np.empty(16, np.int16)
    for g in range(groups):
        k = offset + 4 * g
        for v in range(16):
            low[v] = ((v & 3) - 1) * x[k] + ((v >> 2) - 1) * x[k + 1]
            high[v] = ((v & 3) - 1) * x[k + 2] + ((v >> 2) - 1) * x[k + 3]
        for v in range(256):
            tables[g, v] = low[v & 15] + high[v >> 4]
    return tables


@njit(cache=True, inline="always")
def _b3_tables(x, offset, groups):
    tables = np.empty((groups, 256), np.int16)
    low = np.empty(9, np.int16)
    high = np.empty(27, np.int16)
    for g in range(groups):
        k = offset + 5 * g
        for v in range(9):
            low[v] = (v % 3 - 1) * x[k] + (v // 3 - 1) * x[k + 1]
        for v in range(27):
            high[v] = (
                (v % 3 - 1) * x[k + 2] + ((v // 3) % 3 - 1) * x[k + 3] + (v // 9 - 1) * x[k + 4]
            )
        for v in range(243):
            tables[g, v] = low[v % 9] + high[v // 9]
    return tables


@njit(cache=True, inline="always")
def _lookup_rows(w, tables, out, out_offset, start, stop):
    acc = np.zeros(stop - start, np.int32)
    for g in range(w.shape[0]):
        table = tables[g]
        row = w[g]
        for n in range(start, stop):
            acc[n - start] += table[row[n]]
    for n in range(start, stop):
        out[out_offset + n] = acc[n - start]


@njit(cache=True, inline="always")
def _tables(x, offset, groups, base3):
    return _b3_tables(x, offset, groups) if base3 else _i2_tables(x, offset, groups)


@njit(cache=True, parallel=True)
def lut_matmul_parallel(w, x, out, batch, rows, cols, base3):
    """out (batch * rows) = ternary(w) @ x; w column-major packed bytes (groups, rows), x
    flattened (batch, cols) with cols = groups * weights per byte."""
    groups = w.shape[0]
    chunks = (rows + ROW_CHUNK - 1) // ROW_CHUNK
    for token in range(batch):
        tables = _tables(x, token * cols, groups, base3)
        for chunk in prange(chunks):
            _lookup_rows(
                w, tables, out, token * rows, chunk * ROW_CHUNK, min(rows, (chunk + 1) * ROW_CHUNK)
            )


@njit(cache=True)
def lut_matmul_serial(w, x, out, batch, rows, cols, base3):
    groups = w.shape[0]
    for token in range(batch):
        tables = _tables(x, token * cols, groups, base3)
        _lookup_rows(w, tables, out, token * rows, 0, rows)
