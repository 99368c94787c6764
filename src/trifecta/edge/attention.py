"""The runtime's KV cache and float32 attention (numpy).

One `KVBatch` holds the keys and values (and the Canon layers' inputs) of a batch of
sequences in preallocated arrays
(layers, sequences, block_size, d_model), so a decode step writes in place and attends for
the whole batch with one masked matrix product; prefills, whose lengths differ, attend one
sequence at a time.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float32]


ROTARY_BASE = 10000.0


def rotary_tables(head_dim: int, block_size: int) -> tuple[Array, Array]:
    """cos and sin (block_size, head_dim) of rotary position embeddings (RoPE, Su et al. 2021,
    the "rotate half" arrangement of GPT-NeoX / LLaMA), shared by the PyTorch model and the
    runtime so both rotate by the same float32 numbers."""
    inverse = 1.0 / ROTARY_BASE ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(block_size, dtype=np.float64), inverse)
    angles = np.concatenate([angles, angles], axis=1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rotate(x: Array, cos: Array, sin: Array) -> Array:
    """Apply RoPE to x (tokens, heads, head_dim) with cos/sin rows (tokens, head_dim)."""
    half = x.shape[-1] // 2
    turned = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos[:, None, :] + turned * sin[:, None, :]).astype(np.float32, copy=False)


class KVBatch:
    def __init__(self, layers: int, sequences: int, block_size: int, d_model: int):
        self.keys = np.zeros((layers, sequences, block_size, d_model), np.float32)
        self.values = np.zeros_like(self.keys)
        self.inputs = np.zeros_like(self.keys)  # each layer's inputs, for its Canon layer


def _softmax(scores: Array) -> Array:
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    return weights / weights.sum(axis=-1, keepdims=True)


def attend_prefill(q: Array, keys: Array, values: Array, heads: int) -> Array:
    """Causal attention of one sequence's `n` new positions (the last n of `keys`)."""
    length, total, d = q.shape[0], keys.shape[0], q.shape[1]
    head_dim = d // heads
    qh = q.reshape(length, heads, head_dim).transpose(1, 0, 2)
    kh = keys.reshape(total, heads, head_dim).transpose(1, 2, 0)
    vh = values.reshape(total, heads, head_dim).transpose(1, 0, 2)
    scores = (qh @ kh) * np.float32(1.0 / np.sqrt(head_dim))
    first = total - length  # query i sees cache positions <= first + i
    scores[:, np.arange(total)[None, :] > (first + np.arange(length))[:, None]] = -np.inf
    return (_softmax(scores) @ vh).transpose(1, 0, 2).reshape(length, d).astype(np.float32)


def attend_step(
    q: Array, keys: Array, values: Array, lengths: NDArray[np.int64], heads: int
) -> Array:
    """One new position per sequence: q (B, d) over keys/values (B, T, d), where sequence b
    sees its first `lengths[b]` positions."""
    batch, total, d = keys.shape
    head_dim = d // heads
    qh = q.reshape(batch, heads, 1, head_dim)
    kh = keys.reshape(batch, total, heads, head_dim).transpose(0, 2, 3, 1)
    vh = values.reshape(batch, total, heads, head_dim).transpose(0, 2, 1, 3)
    scores = (qh @ kh) * np.float32(1.0 / np.sqrt(head_dim))  # (B, H, 1, T)
    if batch > 1 or lengths[0] < total:  # else one sequence sees every position: no mask
        hidden = np.arange(total)[None, :] >= lengths[:, None]
        scores = np.where(hidden[:, None, None, :], np.float32(-np.inf), scores)
    return (_softmax(scores) @ vh).reshape(batch, d).astype(np.float32)
