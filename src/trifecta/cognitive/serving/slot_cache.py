"""A replica's key/value cache: one preallocated row ("slot") per request it can decode at once.

The vLLM/Orca layout on a CPU: every plane (each layer's keys, its values and, for a Canon
model, its Canon layer's inputs) is one tensor `[slots, capacity, ...]` allocated when the
replica starts. Row `r` holds its request's positions left-aligned in columns
`[0, length_r)`, so a step writes each new token in place at its own column and nothing is
padded, re-stacked or copied when requests join or leave. The running requests occupy slots
`0 .. n-1` (a step attends over the view `[:n]`); when one leaves, the last slot's row moves
into the hole, so one row is copied, never the batch.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# A request's cached positions, one tensor per plane, each [1, length, ...]: what the prefix
# cache keeps and copies back into a slot.
KV = list[torch.Tensor]


class SlotCache:
    """Preallocated planes `[slots, capacity, *shape]`, `capacity` positions per request."""

    def __init__(self, slots: int, capacity: int, shapes: list[tuple[int, ...]]):
        self.slots = slots
        self.capacity = capacity
        self.planes = [torch.zeros(slots, capacity, *shape) for shape in shapes]

    def write(self, plane: int, rows: torch.Tensor, columns: torch.Tensor, x: torch.Tensor) -> None:
        """planes[plane][rows[i], columns[i]] = x[i] (index tensors of one shape, x that shape
        followed by the plane's)."""
        self.planes[plane].index_put_((rows, columns), x)

    def view(self, plane: int, rows: int, width: int) -> torch.Tensor:
        """The first `width` columns of the first `rows` slots, no copy: [rows, width, *shape]."""
        return self.planes[plane][:rows, :width]

    def gather(self, plane: int, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """planes[plane][rows[i], columns[i]], a copy (the index shape, then the plane's)."""
        return self.planes[plane][rows, columns]

    def load(self, slot: int, kv: KV) -> None:
        """Copy a cached prefix (each plane [1, length, ...]) into the first columns of `slot`."""
        if len(kv) != len(self.planes):
            raise ValueError(f"a prefix of {len(kv)} planes for a cache of {len(self.planes)}")
        _copies()[0](self.planes, kv, slot)

    def read(self, slot: int, length: int) -> KV:
        """The first `length` columns of `slot`, copied out (for the prefix cache)."""
        return [plane[slot : slot + 1, :length].clone() for plane in self.planes]

    def move(self, source: int, target: int, length: int) -> None:
        """Row `source`'s first `length` columns into slot `target` (a leaving row's hole)."""
        _copies()[1](self.planes, source, target, length)


# The per-plane copies as single TorchScript calls: a replica's thread copies every plane
# (two a layer, plus the Canon inputs) while holding the GIL once, not once a plane
# (`scripted_step` says why that matters under the loop's request threads).
def _load(planes: list[torch.Tensor], kv: list[torch.Tensor], slot: int) -> None:
    for i in range(len(planes)):
        prefix = kv[i]
        planes[i][slot, : prefix.shape[1]] = prefix[0]


def _move(planes: list[torch.Tensor], source: int, target: int, length: int) -> None:
    for plane in planes:
        plane[target, :length] = plane[source, :length]


@functools.cache
def _copies() -> tuple[Any, Any]:
    from trifecta.cognitive.serving.scripted_step import script

    return script(_load), script(_move)
