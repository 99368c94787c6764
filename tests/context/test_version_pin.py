"""A request reads a domain's version once (`store.versions_pinned`): its later hops, and the
retrieval it starts on another thread, see the version it first read; a write by another
thread or process, or a move, applies to the next request; its own write to its next read."""

from __future__ import annotations

import threading
from contextvars import copy_context

import numpy as np
import pytest
from sqlalchemy import update

from trifecta.context import tables
from trifecta.context.models import MemoryDraft
from trifecta.context.sql import DomainMoved
from trifecta.context.store import ShardStore, versions_pinned
from trifecta.context.writes import PendingMemory
from trifecta.core.db import transaction

DOMAIN = "plant"
D = tables.domains.c


def memory(store: ShardStore, n: int) -> int:
    """Add one memory through `store`; the version it wrote."""
    vector = np.zeros(384, dtype=np.float32)
    vector[n % 384] = 1.0
    draft = MemoryDraft(title=f"m{n}", content=f"lesson {n}", outcome="success")
    version, _ = store.add_memories(DOMAIN, [PendingMemory(id=f"m{n}", draft=draft, vector=vector)])
    return version


def elsewhere(store: ShardStore, n: int) -> int:
    """A write from a thread outside the request (as another process's would be)."""
    written: list[int] = []
    thread = threading.Thread(target=lambda: written.append(memory(store, n)))
    thread.start()
    thread.join()
    return written[0]


def test_a_request_reads_the_version_once(sqlite_url: str) -> None:
    store = ShardStore(sqlite_url)
    first = memory(store, 1)
    reads = 0
    read = store._read_version

    def counted(domain: str) -> int:
        nonlocal reads
        reads += 1
        return read(domain)

    store._read_version = counted  # type: ignore[method-assign]
    with versions_pinned():
        assert store.version(DOMAIN) == first
        later = elsewhere(store, 2)
        assert later > first
        # the request's later hop, and its retrieval on another thread, see what it first read
        assert store.version(DOMAIN) == first
        seen: list[int] = []
        thread = threading.Thread(
            target=copy_context().run, args=(lambda: seen.append(store.version(DOMAIN)),)
        )
        thread.start()
        thread.join()
        assert seen == [first]
    assert reads == 1
    # the next request reads the other writer's version; outside a request every call reads
    with versions_pinned():
        assert store.version(DOMAIN) == later
    assert store.version(DOMAIN) == later
    assert store.version(DOMAIN) == later
    assert reads == 4


def test_a_requests_own_write_is_read_back(sqlite_url: str) -> None:
    store = ShardStore(sqlite_url)
    with versions_pinned():
        assert store.version(DOMAIN) == 0
        written = memory(store, 1)
        assert store.version(DOMAIN) == written > 0


def test_a_move_applies_to_the_next_request(sqlite_url: str) -> None:
    store = ShardStore(sqlite_url)
    version = memory(store, 1)
    with versions_pinned():
        assert store.version(DOMAIN) == version
        with transaction(store.engine, write=True) as session:
            session.execute(
                update(tables.domains)
                .where(D.domain == DOMAIN)
                .values(state="moved", moved_to="sqlite:///elsewhere.db")
            )
        assert store.version(DOMAIN) == version  # the request goes on as it began
    with versions_pinned(), pytest.raises(DomainMoved, match="elsewhere"):
        store.version(DOMAIN)


def test_pins_are_per_shard(sqlite_url: str) -> None:
    one = ShardStore(sqlite_url)
    other = ShardStore(sqlite_url.replace("test.db", "other.db"))
    memory(one, 1)
    with versions_pinned():
        assert one.version(DOMAIN) > 0
        assert other.version(DOMAIN) == 0  # the same domain on another shard: its own read
