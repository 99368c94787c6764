"""Group commit: writes handed in by several threads at once share one transaction, and each
caller returns its own result (or raises its own error) once that transaction is done."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import event

from tests.context.conftest import ServiceFactory
from tests.context.submitter import trajectory
from tests.context.test_learn_queue import seed_bullet
from trifecta.context.facade import ContextService
from trifecta.context.learn_queue import Item, LearnTicket
from trifecta.core.group_commit import GroupCommit


def test_callers_arriving_during_a_write_share_the_next_one() -> None:
    first_in, release = threading.Event(), threading.Event()
    groups: list[list[int]] = []

    def write(items: list[int]) -> Sequence[int | BaseException]:
        groups.append(list(items))
        if len(groups) == 1:  # hold the first write until the others queue behind it
            first_in.set()
            release.wait(10)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(write)
    results: dict[int, int | str] = {}

    def call(i: int) -> None:
        try:
            results[i] = group.submit(i)
        except ValueError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    assert first_in.wait(10)
    threads += [threading.Thread(target=call, args=(i,)) for i in range(1, 6)]
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 10
    while len(group._waiting) < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    for t in threads:
        t.join(10)
    assert groups[0] == [0] and sorted(groups[1]) == [1, 2, 3, 4, 5] and len(groups) == 2
    assert results == {0: 0, 1: "odd 1", 2: 20, 3: "odd 3", 4: 40, 5: "odd 5"}
    assert (group.writes, group.items) == (2, 6)


def test_a_write_returning_too_few_results_fails_its_callers() -> None:
    """A write that loses a result fails its group's callers; the next caller still writes
    (found while settling the group, the mismatch left it busy and every caller after it
    waiting for ever)."""
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        group.submit(1)
    group._write = lambda items: list(items)
    done = threading.Event()

    def second() -> None:
        if group.submit(2) == 2:
            done.set()

    threading.Thread(target=second, daemon=True).start()
    assert done.wait(10)


def test_a_failed_transaction_fails_every_caller_in_it() -> None:
    def write(items: list[int]) -> Sequence[int | BaseException]:
        raise RuntimeError("database gone")

    group: GroupCommit[int, int] = GroupCommit(write)
    with pytest.raises(RuntimeError, match="database gone"):
        group.submit(1)
    group._write = lambda items: list(items)  # the next write works again
    assert group.submit(2) == 2


def test_concurrent_submits_are_each_acknowledged_once(service: ContextService) -> None:
    """Sixteen threads submit at once (two of them the same trajectory): every distinct
    trajectory gets its own row and position, the repeat is a duplicate of its first."""
    bullet = seed_bullet(service)
    tickets: dict[int, LearnTicket] = {}
    start = threading.Barrier(16)

    def submit(n: int) -> None:
        start.wait(10)
        tickets[n] = service.submit(trajectory(min(n, 14), bullet))

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(tickets) == 16
    positions = {n: t.position for n, t in tickets.items()}
    assert positions[14] == positions[15]
    assert len(set(positions.values())) == 15
    assert sum(t.duplicate for t in tickets.values()) == 1
    assert service.drain(timeout=60)
    assert [r.state for r in service.learn_queue("twin-a")] == ["done"] * 15


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_group_is_one_insert_that_skips_repeats(
    backend: str, make_service: ServiceFactory, sqlite_url: str, request: pytest.FixtureRequest
) -> None:
    """One group: new trajectories, one already queued, and one twice: one row each, the
    repeats acknowledged as duplicates at their first row's position, in the given order.
    On both back ends the group is one statement on the driver's connection."""
    url = sqlite_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    service = make_service(url)
    bullet = seed_bullet(service)
    queue = service.router.store_for("plant").queue
    before = queue.enqueue("plant", trajectory(0, bullet))
    items: list[Item] = [("plant", trajectory(i, bullet), None) for i in (1, 0, 2, 1)]
    statements: list[str] = []

    def seen(*args: object) -> None:
        statements.append(str(args[2]))

    def traced(dbapi_connection: Any, *_: object) -> None:
        # The group runs on the driver's connection, past SQLAlchemy's events.
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.set_trace_callback(statements.append)
            return
        execute = dbapi_connection.execute  # psycopg: no trace hook, so wrap the method

        def execute_traced(query: str, *args: object, **kwargs: object) -> object:
            statements.append(str(query))
            return execute(query, *args, **kwargs)

        dbapi_connection.execute = execute_traced

    event.listen(queue.engine, "before_cursor_execute", seen)
    event.listen(queue.engine, "checkout", traced)
    try:
        tickets = queue._enqueue_group(items)
    finally:
        event.remove(queue.engine, "before_cursor_execute", seen)
        event.remove(queue.engine, "checkout", traced)
    assert sum(s.lstrip().upper().startswith("INSERT") for s in statements) == 1
    acknowledged = [t for t in tickets if isinstance(t, LearnTicket)]
    assert len(acknowledged) == len(tickets), tickets  # no item failed
    got = [(t.trajectory_id, t.duplicate) for t in acknowledged]
    assert got == [
        ("traj-kill-00001", False),
        ("traj-kill-00000", True),
        ("traj-kill-00002", False),
        ("traj-kill-00001", True),
    ]
    positions = [t.position for t in acknowledged]
    assert positions[1] == before.position and positions[3] == positions[0]
    assert len({before.position, positions[0], positions[2]}) == 3
    assert [r.trajectory_id for r in queue.rows("plant")] == [
        "traj-kill-00000",
        "traj-kill-00001",
        "traj-kill-00002",
    ]
