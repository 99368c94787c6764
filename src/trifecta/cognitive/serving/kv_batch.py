"""The running batch's key/value cache: rows of different lengths, left-padded to one width.

Continuous batching changes the batch between decoding steps: new requests join with their
own (prefilled) cache, finished ones leave. Rows are aligned on the right, so every row's
next token sits in the last column; `mask` marks real positions (1) and padding (0), and
padding columns that no row uses any more are trimmed away when a row leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [rows, heads, width, dim]


def cache_from(layers: KV) -> DynamicCache:
    return DynamicCache(ddp_cache_data=[(k, v) for k, v in layers])


def cache_layers(cache: DynamicCache) -> KV:
    # Llama caches hold only full-attention layers, each with `keys` and `values`.
    return [(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr,misc]


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


@dataclass
class KVBatch:
    """Keys/values per layer [rows, heads, width, head_dim] and the padding mask [rows, width]."""

    cache: DynamicCache
    mask: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @staticmethod
    def stack(rows: Sequence[KV], lengths: Sequence[int]) -> KVBatch:
        """One left-padded batch from per-row caches (each [1, heads, length, dim])."""
        width = max(lengths)
        layers: KV = []
        for index in range(len(rows[0])):
            keys = torch.cat([_pad_left(row[index][0], width, 2) for row in rows])
            values = torch.cat([_pad_left(row[index][1], width, 2) for row in rows])
            layers.append((keys, values))
        mask = torch.stack(
            [_pad_left(torch.ones(length, dtype=torch.long), width, 0) for length in lengths]
        )
        return KVBatch(cache_from(layers), mask)

    def merge(self, other: KVBatch) -> KVBatch:
        """This batch's rows followed by `other`'s, padded on the left to the wider of the two."""
        width = max(self.width, other.width)
        layers = [
            (
                torch.cat([_pad_left(k1, width, 2), _pad_left(k2, width, 2)]),
                torch.cat([_pad_left(v1, width, 2), _pad_left(v2, width, 2)]),
            )
            for (k1, v1), (k2, v2) in zip(
                cache_layers(self.cache), cache_layers(other.cache), strict=True
            )
        ]
        mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)])
        return KVBatch(cache_from(layers), mask)

    def keep(self, rows: Sequence[int]) -> KVBatch:
        """Only `rows` (in that order), without the padding columns none of them uses."""
        index = torch.tensor(list(rows), dtype=torch.long)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0].item()) if len(used) else mask.shape[1]
        layers = [
            (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
            for k, v in cache_layers(self.cache)
        ]
        return KVBatch(cache_from(layers), mask[:, start:].contiguous())

    def row(self, row: int, length: int) -> KV:
        """The first `length` real positions of one row, copied out of the batch."""
        columns = self.mask[row].nonzero().squeeze(1)[:length]
        return [
            (k[row : row + 1, :, columns].clone(), v[row : row + 1, :, columns].clone())
            for k, v in cache_layers(self.cache)
        ]
