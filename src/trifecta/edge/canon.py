"""The runtime's Canon layer (numba): each token's input plus a learnt, per-feature weighted
sum of the last `width` inputs, itself included (see `model.Canon`, the reference).

Summed term by term in the reference's order, so that the float32 results are the same
numbers; a term before the first position is skipped where the reference adds its zero
padding times the weight (the same value).

The Canon layer's output only feeds the attention's RMSNorm and int8 quantisation, so one
compiled call stores the new inputs in the cache, mixes them and normalises and quantises
the mix (`canon_norm_quantize`). At batch 1 a decode step is ~130 us a layer, mostly fixed
per-call costs: the Canon layer as its own store, numba call and norm call cost ~4% of the
decode speed; fused, it adds one loop of `width * d_model` multiply-adds to a call the
layer makes anyway. The cache keeps every input (the KV cache's block_size positions, written
in place), so no token allocates or concatenates, and a step reads only the last `width`.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from trifecta.edge.kernels.activations import norm_quantize_row


@njit(cache=True)
def _canon_row(inputs, row, position, weight, out):
    """The Canon mix of `inputs[row, position]` with the inputs before it, into `out` (d,).
    The look-back is the outer loop, so the inner one runs along contiguous features (LLVM
    vectorises it); each feature still adds its terms in the order of j."""
    width, d = weight.shape
    for i in range(d):
        out[i] = inputs[row, position, i]
    for j in range(min(width, position + 1)):
        for i in range(d):
            out[i] = out[i] + weight[j, i] * inputs[row, position - j, i]


@njit(cache=True)
def canon_rows(
    inputs: NDArray[np.float32],
    rows: NDArray[np.int64],
    positions: NDArray[np.int64],
    weight: NDArray[np.float32],
) -> NDArray[np.float32]:
    """Token n is `inputs[rows[n], positions[n]]` (inputs: sequences x positions x d, each
    sequence's inputs so far); returns its mix with the tokens before it, (tokens, d)."""
    out = np.empty((len(rows), weight.shape[1]), np.float32)
    for n in range(len(rows)):
        _canon_row(inputs, rows[n], positions[n], weight, out[n])
    return out


@njit(cache=True)
def canon_norm_quantize(
    inputs: NDArray[np.float32],
    rows: NDArray[np.int64],
    positions: NDArray[np.int64],
    x: NDArray[np.float32],
    weight: NDArray[np.float32],
    norm_weight: NDArray[np.float32],
    eps: float,
) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """Store token n's input `x[n]` at `inputs[rows[n], positions[n]]`, mix it with the
    inputs before it (`canon_rows`), then RMSNorm * norm_weight and per-token absmax int8
    (`activations.norm_quantize`): (x_q (tokens, d), multiplier (tokens, 1)), the same
    numbers as those two steps apart."""
    tokens, d = x.shape
    for n in range(tokens):
        inputs[rows[n], positions[n]] = x[n]
    x_q = np.empty((tokens, d), np.int8)
    multipliers = np.empty((tokens, 1), np.float32)
    mixed = np.empty(d, np.float32)
    normed = np.empty(d, np.float32)
    for n in range(tokens):
        _canon_row(inputs, rows[n], positions[n], weight, mixed)
        multipliers[n, 0] = norm_quantize_row(mixed, norm_weight, eps, normed, x_q, n)
    return x_q, multipliers
