"""A view's memories held as compact rows: each reads back equal to the item stored (fields,
JSON), filters read from the row agree with the item's fields, and a row costs a fraction of
the validated model it replaces (the soak's growth per memory kept)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.context.memory_table import MemoryTable
from trifecta.context.models import MemoryItem, MemorySource

text = st.text(min_size=1, max_size=40)
maybe = st.none() | st.text(min_size=1, max_size=20)


@st.composite
def items(draw: st.DrawFn) -> MemoryItem:
    created = draw(st.floats(0, 2e9))
    return MemoryItem(
        id=draw(st.from_regex(r"mem-[0-9a-f]{8}", fullmatch=True)),
        domain="energy",
        title=draw(text),
        description=draw(st.text(max_size=40)),
        content=draw(text),
        outcome=draw(st.sampled_from(["success", "failure"])),
        source=MemorySource(capsule_id=draw(maybe), task_id=draw(maybe), trajectory_id=draw(maybe)),
        reinforced=draw(st.integers(0, 5)),
        created_at=created,
        updated_at=created + draw(st.floats(0, 1e6)),
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(items(), min_size=1, max_size=8), st.sampled_from([None, "success", "failure"]))
def test_rows_read_back_as_the_items_stored(stored: list[MemoryItem], outcome: str | None) -> None:
    table = MemoryTable("energy")
    latest = {}
    for item in stored:
        table[item.id] = item
        latest[item.id] = item
    assert len(table) == len(latest) and set(table) == set(latest)
    since = stored[0].created_at
    for memory_id, item in latest.items():
        assert memory_id in table
        read = table[memory_id]
        assert read == item and read.model_dump_json() == item.model_dump_json()
        assert table.passes(memory_id, outcome, since) == (
            (outcome is None or item.outcome == outcome) and item.created_at >= since
        )
    gone = next(iter(latest))
    table.discard(gone)
    table.discard(gone)  # twice: no error
    assert gone not in table and len(table) == len(latest) - 1
    with pytest.raises(KeyError):
        table[gone]


def test_an_item_of_another_domain_is_refused() -> None:
    table = MemoryTable("grid")
    item = MemoryItem(
        id="mem-1", domain="energy", title="t", description="", content="c", outcome="success",
        source=MemorySource(), created_at=1.0, updated_at=1.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="domain"):
        table["mem-1"] = item


def soak_shaped(i: int) -> MemoryItem:
    return MemoryItem(
        id=f"mem-{i:08x}", domain="energy", title="energy solved via edge",
        description="verifier judged the answer correct", content=f"Task: {i}\nAnswer: {i}",
        outcome="success", source=MemorySource(capsule_id="c", task_id=f"t-{i}"),
        created_at=float(i), updated_at=float(i),
    )  # fmt: skip


def test_a_row_costs_a_fraction_of_the_model() -> None:
    """Measured with tracemalloc over 200 memories with the soak's shape: the models take
    about 1.6 KB each besides their strings, the rows about 0.2 KB (bound: a quarter)."""
    stored = [soak_shaped(i) for i in range(200)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        models = [item.model_copy() for item in stored]  # new models sharing the strings
        models_bytes = tracemalloc.get_traced_memory()[0] - before
        del models
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        table = MemoryTable("energy")
        for item in stored:
            table[item.id] = item
        table_bytes = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(table) == 200
    assert table_bytes < models_bytes / 4, (table_bytes, models_bytes)
