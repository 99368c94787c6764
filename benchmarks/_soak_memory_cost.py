"""The soak benchmark's `--memory-cost` probe: what one kept memory costs in RAM, by part.

Memories are the product's data: a domain view holds every active one for as long as the
process serves the domain, so their cost per memory times the memories a task writes (about
1.1 in the soak) is growth no bound removes. This builds memories as the soak's workload
writes them (`structured_draft` of held-out tasks, each string made anew as a database row
would give it), then measures with tracemalloc, per memory:

- the item as a validated `MemoryItem` (with its `MemorySource` and strings), as the views
  held it before `memory_table.py`;
- the item as a `MemoryTable` row (the same strings, interned where many repeat);
- the index's share (`MemoryIndex`: the float32 row, the row's id slot and its dict entry);
- a whole `DomainView` holding them (table, index and the view's own entries).
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from rich.console import Console

from trifecta.context.memory import memory_id_for, structured_draft
from trifecta.context.memory_table import MemoryTable, row_of
from trifecta.context.models import MemoryItem
from trifecta.context.sql import memory_of
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.context.vector_index import MemoryIndex
from trifecta.context.views import DomainView
from trifecta.context.writes import Changes
from trifecta.core.tasks import iter_tasks

DIM = 384  # MiniLM's embedding width


def workload_rows(count: int) -> list[dict[str, Any]]:
    """Database-shaped rows of the memories the soak's tasks write (one per task)."""
    rows = []
    tasks = iter_tasks(seed=1, split="heldout")
    for i, task in zip(range(count), tasks, strict=False):
        trajectory = Trajectory(
            capsule_id=f"capsule-{i % 6}", task_id=task.id, task_kind=task.kind,
            prompt=task.prompt, answer=task.answer, outcome="success" if i % 4 else "failure",
            judge="verifier", verdict_detail=f"expected {task.answer}",
            steps=[TrajectoryStep(layer="edge", mean_entropy=0.1 + i % 7 / 10)],
        )  # fmt: skip
        draft = structured_draft(trajectory)
        rows.append(
            {
                "id": memory_id_for(draft),
                "domain": "energy",
                # Copies, not the drafts' own objects: each row's strings are its own, as
                # SQLite returns them.
                "title": "".join(draft.title),
                "description": "".join(draft.description),
                "content": "".join(draft.content),
                "outcome": "".join(draft.outcome),
                "source_capsule": "".join(trajectory.capsule_id),
                "source_task": "".join(task.id),
                "source_trajectory": "".join(trajectory.id),
                "reinforced": 0,
                "created_at": time.time(),
                "updated_at": time.time(),
            }
        )
    return rows


def traced_bytes(build: Callable[[], object]) -> tuple[float, object]:
    """Bytes tracemalloc sees held by what `build` returns (its arguments made before)."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    kept = build()
    gc.collect()
    return float(tracemalloc.get_traced_memory()[0] - before), kept


def string_bytes(values: Iterable[object]) -> float:
    """Bytes of the distinct string objects among `values` (one copy counted once)."""
    distinct = {id(v): v for v in values if isinstance(v, str)}
    return float(sum(sys.getsizeof(v) for v in distinct.values()))


def memory_cost(count: int) -> dict[str, float]:
    """Bytes per memory of each part, for `count` memories (one domain)."""
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((count, DIM)).astype(np.float32)
    vectors = list(raw / np.linalg.norm(raw, axis=1, keepdims=True))
    rows = workload_rows(count)
    tracemalloc.start()
    try:
        # The models reference the rows' strings: their own cost is the rest.
        items_bytes, built = traced_bytes(lambda: [memory_of(r) for r in rows])
        items: list[MemoryItem] = built  # type: ignore[assignment]
        item_strings = string_bytes(
            v for item in items for v in (*item.model_dump(exclude={"source"}).values(),
                                          *vars(item.source).values())
        )  # fmt: skip

        def filled_table() -> MemoryTable:
            kept = MemoryTable("energy")
            for item in items:
                kept[item.id] = item
            return kept

        table_bytes, _table = traced_bytes(filled_table)
        table_strings = string_bytes(v for item in items for v in row_of(item))
        del _table
        pairs = [(item.id, vector) for item, vector in zip(items, vectors, strict=True)]
        index_bytes, _index = traced_bytes(lambda: filled_index(pairs))
        del _index
        changes = Changes(1, [], [(item, "active", v) for item, v in zip(items, vectors, strict=True)], 0)  # fmt: skip
        view_bytes, _view = traced_bytes(lambda: filled_view(changes))
    finally:
        tracemalloc.stop()
    return {
        "MemoryItem (validated model, its MemorySource)": items_bytes / count,
        "  its strings": item_strings / count,
        "MemoryTable row": table_bytes / count,
        "  its strings (few-valued ones interned)": table_strings / count,
        "MemoryIndex share (float32 row, id slot, dict entry, spare capacity)": index_bytes / count,
        "DomainView holding them now (table row, index; strings shared)": view_bytes / count,
        "a memory before (model, strings, index)": (items_bytes + item_strings + index_bytes)
        / count,
        "a memory now (row, strings, index)": (table_bytes + table_strings + index_bytes) / count,
    }


def filled_index(pairs: list[tuple[str, np.ndarray]]) -> MemoryIndex:
    index = MemoryIndex(DIM)
    for start in range(0, len(pairs), 3):  # a few at a time, as learned batches write them
        index.upsert(pairs[start : start + 3])
    return index


def filled_view(changes: Changes) -> DomainView:
    view = DomainView("energy")
    view.apply(changes)
    return view


def print_memory_cost(console: Console, count: int) -> None:
    console.print(f"What a kept memory costs in RAM, bytes per memory ({count:,} memories):")
    for part, size in memory_cost(count).items():
        console.print(f"  {part}: {size:,.0f}")
