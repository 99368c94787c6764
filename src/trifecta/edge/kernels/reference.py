"""The reference the kernels are checked against: exact integer products in numpy, and the
activation quantisation of BitLinear (same float32 operations as `bitlinear.int8_activations`)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

ACTIVATION_LEVELS = np.float32(127.0)
MIN_SCALE = np.float32(1e-5)


def reference_matmul(values: NDArray[np.int8], x_q: NDArray[np.int8]) -> NDArray[np.int32]:
    """(batch, K) int8 x ternary (N, K) -> (batch, N) int32, computed in int64."""
    return (x_q.astype(np.int64) @ values.astype(np.int64).T).astype(np.int32)


def quantize_activations(x: NDArray[np.float32]) -> tuple[NDArray[np.int8], NDArray[np.float32]]:
    """Per-token absmax int8: (x_q, multiplier 127/gamma with shape (..., 1))."""
    gamma = np.maximum(np.abs(x).max(axis=-1, keepdims=True), MIN_SCALE)
    multiplier = ACTIVATION_LEVELS / gamma
    x_q = np.clip(np.rint(x * multiplier), -128, 127).astype(np.int8)
    return x_q, multiplier.astype(np.float32)
