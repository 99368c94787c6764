"""Bit-packed Boolean matrices and the numba kernels that join them.

A dense Boolean relation over n x m symbols is n rows of ceil(m / 64) uint64 words (bit j of
word w of row i is the pair (i, 64 w + j)): 50 MB for 20,000 x 20,000, where a sparse matrix
of the same pairs would take 2 GB. The join `C = A @ B` (Boolean) is computed as an OR of
B's rows selected by A's nonzeros, `C[i] = OR_{k in A[i]} B[k]`, a word at a time; rows of
B that are empty (most rows of a semi-naive delta) are skipped. When A is the dense operand
and B the sparse one the product is taken transposed, `C^T = B^T @ A^T`, so the loop always
walks the sparser operand. Written by hand: scipy and numpy have no bit-packed Boolean
matrix product.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import scipy.sparse as sp
from numba import prange
from numpy.typing import NDArray

Words = NDArray[np.uint64]


def words_for(m: int) -> int:
    return (m + 63) // 64


def _or_rows_py(
    indptr: NDArray[np.int64],
    indices: NDArray[np.int64],
    b: Words,
    nonempty: NDArray[np.bool_],
    out: Words,
) -> None:
    n = indptr.shape[0] - 1
    words = b.shape[1]
    for i in prange(n):
        for p in range(indptr[i], indptr[i + 1]):
            k = indices[p]
            if nonempty[k]:
                for w in range(words):
                    out[i, w] |= b[k, w]


def _pack_py(indptr: NDArray[np.int64], indices: NDArray[np.int64], out: Words) -> None:
    n = indptr.shape[0] - 1
    one = np.uint64(1)
    for i in prange(n):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            out[i, j >> 6] |= one << np.uint64(j & 63)


def _unpack_py(bits: Words, indptr: NDArray[np.int64], indices: NDArray[np.int64]) -> None:
    n, words = bits.shape
    one = np.uint64(1)
    zero = np.uint64(0)
    for i in prange(n):
        at = indptr[i]
        for w in range(words):
            x = bits[i, w]
            j = 0
            while x != zero:
                if x & one:
                    indices[at] = w * 64 + j
                    at += 1
                x >>= one
                j += 1


def _transpose_py(bits: Words, n: int, out: Words) -> None:
    """64 x 64 blocks transposed in registers (the recursive block swap of Hacker's Delight,
    section 7-3, for least-significant-bit-first rows)."""
    row_blocks = (n + 63) // 64
    words = bits.shape[1]
    for bi in prange(row_blocks):
        a = np.zeros(64, np.uint64)
        for bj in range(words):
            for r in range(64):
                row = bi * 64 + r
                a[r] = bits[row, bj] if row < n else np.uint64(0)
            j = np.uint64(32)
            m = np.uint64(0x00000000FFFFFFFF)
            while j != np.uint64(0):
                k = 0
                while k < 64:
                    t = ((a[k] >> j) ^ a[k + j]) & m
                    a[k] ^= t << j
                    a[k + j] ^= t
                    k = int((k + np.int64(j) + 1) & ~np.int64(j))
                j >>= np.uint64(1)
                m ^= m << j
            for c in range(64):
                col = bj * 64 + c
                if col < out.shape[0]:
                    out[col, bi] = a[c]


Kernel = Callable[..., None]


def _compiled(func: Kernel) -> tuple[Kernel, Kernel]:
    """A kernel compiled twice: threaded for large inputs, serial for small ones (where
    starting the thread pool costs more than the work)."""
    return numba.njit(parallel=True, cache=True)(func), numba.njit(cache=True)(func)


_OR_ROWS = _compiled(_or_rows_py)
_PACK = _compiled(_pack_py)
_UNPACK = _compiled(_unpack_py)
_TRANSPOSE = _compiled(_transpose_py)
PARALLEL_MIN_WORDS = 1 << 14


def _pick(kernels: tuple[Kernel, Kernel], words: int) -> Kernel:
    return kernels[0] if words >= PARALLEL_MIN_WORDS else kernels[1]


class BitMatrix:
    """An n x m Boolean matrix, bit-packed by rows."""

    __slots__ = ("bits", "shape")

    def __init__(self, bits: Words, shape: tuple[int, int]):
        self.bits = bits
        self.shape = shape

    @classmethod
    def zeros(cls, n: int, m: int) -> BitMatrix:
        return cls(np.zeros((n, words_for(m)), np.uint64), (n, m))

    @classmethod
    def from_csr(cls, matrix: sp.csr_array) -> BitMatrix:
        n, m = matrix.shape
        out = cls.zeros(n, m)
        _pick(_PACK, out.bits.size)(
            matrix.indptr.astype(np.int64), matrix.indices.astype(np.int64), out.bits
        )
        return out

    def to_csr(self) -> sp.csr_array:
        counts = np.bitwise_count(self.bits).sum(axis=1, dtype=np.int64)
        indptr = np.zeros(self.shape[0] + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        indices = np.empty(int(indptr[-1]), np.int64)
        _pick(_UNPACK, self.bits.size)(self.bits, indptr, indices)
        data = np.ones(len(indices), np.bool_)
        return sp.csr_array((data, indices, indptr), shape=self.shape)

    @property
    def nnz(self) -> int:
        return int(np.bitwise_count(self.bits).sum(dtype=np.int64))

    def nonempty_rows(self) -> NDArray[np.bool_]:
        result: NDArray[np.bool_] = np.asarray(self.bits.any(axis=1))
        return result

    def transpose(self) -> BitMatrix:
        n, m = self.shape
        out = BitMatrix.zeros(m, n)
        _pick(_TRANSPOSE, self.bits.size)(self.bits, n, out.bits)
        return out

    def __or__(self, other: BitMatrix) -> BitMatrix:
        return BitMatrix(self.bits | other.bits, self.shape)

    def andnot(self, other: BitMatrix) -> BitMatrix:
        return BitMatrix(self.bits & ~other.bits, self.shape)

    def __and__(self, other: BitMatrix) -> BitMatrix:
        return BitMatrix(self.bits & other.bits, self.shape)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BitMatrix)
            and self.shape == other.shape
            and bool(np.array_equal(self.bits, other.bits))
        )

    __hash__ = None  # type: ignore[assignment]  # mutable value


def sparse_times_bits(a: sp.csr_array, b: BitMatrix) -> BitMatrix:
    """`a @ b` (Boolean) for sparse `a` (n x k) and packed `b` (k x m): OR of b's rows."""
    n = a.shape[0]
    out = BitMatrix.zeros(n, b.shape[1])
    _pick(_OR_ROWS, out.bits.size + a.nnz)(
        a.indptr.astype(np.int64), a.indices.astype(np.int64), b.bits, b.nonempty_rows(), out.bits
    )
    return out


def bool_matmul_bits(a: sp.csr_array | BitMatrix, b: sp.csr_array | BitMatrix) -> BitMatrix:
    """`a @ b` as a packed matrix, walking whichever operand has fewer nonzeros (transposing
    when that is the right-hand one): cost ~ nnz(walked) x words of the other side."""
    n, m = a.shape[0], b.shape[1]
    a_nnz = a.nnz
    b_nnz = b.nnz
    if a_nnz * words_for(m) <= b_nnz * words_for(n):
        a_csr = a.to_csr() if isinstance(a, BitMatrix) else a
        b_bits = b if isinstance(b, BitMatrix) else BitMatrix.from_csr(sp.csr_array(b))
        return sparse_times_bits(a_csr, b_bits)
    b_t = b.transpose().to_csr() if isinstance(b, BitMatrix) else sp.csr_array(b.T)
    a_t = a.transpose() if isinstance(a, BitMatrix) else BitMatrix.from_csr(sp.csr_array(a.T))
    return sparse_times_bits(b_t, a_t).transpose()
