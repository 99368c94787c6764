"""RMSNorm fused with BitLinear's int8 activation quantisation, in numba.

Every BitLinear of the edge model follows an RMSNorm, so the runtime normalises and quantises
each token in one pass instead of a dozen small numpy calls. The quantisation is the
reference's float32 arithmetic, operation for operation (gamma = max |x|, multiplier =
127 / gamma, round half to even, clamp), so it is bit-identical to
`reference.quantize_activations` and to `bitlinear.int8_activations` for the same input.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray


@njit(cache=True)
def _quantize_row(y, out, row):
    gamma = np.float32(1e-5)
    for i in range(y.size):
        gamma = max(gamma, abs(y[i]))
    multiplier = np.float32(127.0) / gamma
    for i in range(y.size):
        value = np.rint(y[i] * multiplier)
        out[row, i] = np.int8(min(max(value, np.float32(-128.0)), np.float32(127.0)))
    return multiplier


@njit(cache=True)
def norm_quantize_row(y, weight, eps, normed, out, row):
    """RMSNorm(y) * weight of one token (y: (cols,)) into `out[row]` as int8, through the
    scratch row `normed`; returns its multiplier. Shared with the fused Canon kernel."""
    cols = y.size
    total = np.float32(0.0)
    for i in range(cols):
        total += y[i] * y[i]
    scale = np.float32(1.0) / np.sqrt(total / np.float32(cols) + np.float32(eps))
    for i in range(cols):
        normed[i] = y[i] * scale * weight[i]
    return _quantize_row(normed, out, row)


@njit(cache=True)
def norm_quantize(
    x: NDArray[np.float32], weight: NDArray[np.float32], eps: float
) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """RMSNorm(x) * weight, then per-token absmax int8: (x_q, multiplier (rows, 1))."""
    rows, cols = x.shape
    x_q = np.empty((rows, cols), np.int8)
    multipliers = np.empty((rows, 1), np.float32)
    normed = np.empty(cols, np.float32)
    for r in range(rows):
        multipliers[r, 0] = norm_quantize_row(x[r], weight, eps, normed, x_q, r)
    return x_q, multipliers


@njit(cache=True)
def quantize(x: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """Per-token absmax int8 of rows that are already normalised: (x_q, multiplier (rows, 1))."""
    rows, cols = x.shape
    x_q = np.empty((rows, cols), np.int8)
    multipliers = np.empty((rows, 1), np.float32)
    for r in range(rows):
        multipliers[r, 0] = _quantize_row(x[r], x_q, r)
    return x_q, multipliers
