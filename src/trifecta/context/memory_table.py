"""A domain view's memories, held as compact rows rather than as pydantic models.

A view keeps every active memory of its domain for as long as the process serves the
domain, so what one memory costs in RAM is paid per memory the product ever kept. As a
frozen `MemoryItem` (with its nested `MemorySource`) a memory took about 1.6 KB besides its
strings, measured with tracemalloc (`benchmarks/soak.py --memory-cost`): two models, each
with an instance dict and a fields-set set. Here it is one named tuple of the field values
(about 0.2 KB), its few-valued strings (outcome, capsule, the structured drafts' titles and
descriptions) interned so that equal ones are held once, and a `MemoryItem` is built again
(validated again from the row's values: about 2 us) only for the
memories a search returns, a few per request.

`outcome` and `created_at`, which searches filter on, are read from the row without building
the model (`passes`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import NamedTuple

from trifecta.context.models import MemoryItem


class Row(NamedTuple):
    """A MemoryItem's fields, the source's three flattened in (a tuple: no instance dict)."""

    id: str
    title: str
    description: str
    content: str
    outcome: str
    capsule_id: str | None
    task_id: str | None
    trajectory_id: str | None
    reinforced: int
    created_at: float
    updated_at: float


def _shared(text: str | None) -> str | None:
    """One copy of a string many memories repeat (interned strings are freed when unused)."""
    return None if text is None else sys.intern(text)


def row_of(item: MemoryItem) -> Row:
    source = item.source
    return Row(
        item.id,
        sys.intern(item.title),
        sys.intern(item.description),
        item.content,
        sys.intern(item.outcome),
        _shared(source.capsule_id),
        source.task_id,
        source.trajectory_id,
        item.reinforced,
        item.created_at,
        item.updated_at,
    )


class MemoryTable:
    """id -> MemoryItem for one domain, stored as rows. Not thread-safe: the view calls it
    under its lock. `table[id]` builds a new (equal) `MemoryItem` on each call."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self._rows: dict[str, Row] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def fork(self) -> MemoryTable:
        """A copy for a write to change while searches read this one (the rows, immutable
        tuples, are shared; the id map is copied)."""
        twin = MemoryTable(self.domain)
        twin._rows = dict(self._rows)
        return twin

    def __setitem__(self, memory_id: str, item: MemoryItem) -> None:
        if item.domain != self.domain:
            raise ValueError(f"memory {memory_id} is of domain {item.domain}, not {self.domain}")
        self._rows[memory_id] = row_of(item)

    def discard(self, memory_id: str) -> None:
        self._rows.pop(memory_id, None)

    def __getitem__(self, memory_id: str) -> MemoryItem:
        return self._item(self._rows[memory_id])

    def passes(self, memory_id: str, outcome: str | None, since: float | None) -> bool:
        """Whether the memory passes a search's filters, read from its row."""
        row = self._rows[memory_id]
        return (outcome is None or row.outcome == outcome) and (
            since is None or row.created_at >= since
        )

    def _item(self, row: Row) -> MemoryItem:
        return item_of(self.domain, row)


def item_of(domain: str, row: Row) -> MemoryItem:
    """The memory a row holds, as a model again."""
    # Validated again from a dict (pydantic-core: about 2 us here, faster than
    # `model_construct`'s Python loop and than keyword construction).
    return MemoryItem.model_validate(
        {
            "id": row.id,
            "domain": domain,
            "title": row.title,
            "description": row.description,
            "content": row.content,
            "outcome": row.outcome,
            "source": {
                "capsule_id": row.capsule_id,
                "task_id": row.task_id,
                "trajectory_id": row.trajectory_id,
            },
            "reinforced": row.reinforced,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )
