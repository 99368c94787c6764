"""The runtime's Canon layer (numba): each token's input plus a learnt, per-feature weighted
sum of the last `width` inputs, itself included (see `model.Canon`, the reference).

Summed term by term in the reference's order, so that the float32 results are the same
numbers; a term before the first position is skipped where the reference adds its zero
padding times the weight (the same value). One compiled loop instead of a dozen numpy calls
per layer: at batch 1 the numpy version cost more than the rest of the decode step.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray


@njit(cache=True)
def canon_rows(
    inputs: NDArray[np.float32],
    rows: NDArray[np.int64],
    positions: NDArray[np.int64],
    weight: NDArray[np.float32],
) -> NDArray[np.float32]:
    """Token n is `inputs[rows[n], positions[n]]` (inputs: sequences x positions x d, each
    sequence's inputs so far); returns its mix with the tokens before it, (tokens, d)."""
    width, d = weight.shape
    out = np.empty((len(rows), d), np.float32)
    for n in range(len(rows)):
        row, position = rows[n], positions[n]
        for i in range(d):
            total = inputs[row, position, i]
            for j in range(min(width, position + 1)):
                total = total + weight[j, i] * inputs[row, position - j, i]
            out[n, i] = total
    return out
