"""The learning worker's rounds: rows past a domain's batch are learned at once, without
waiting out the linger or the poll (the round that leaves them says so)."""

from __future__ import annotations

import time

from tests.context.conftest import ServiceFactory
from tests.context.submitter import trajectory
from tests.context.test_learn_queue import seed_bullet
from trifecta.context.settings import ContextSettings


def test_a_backlog_past_the_batch_is_learned_without_waiting_the_linger(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    # A linger and a poll longer than the test's bound: only the worker's "rows left" answer
    # can start the rounds after the first.
    slow = ContextSettings(tenancy_ttl_s=0, learn_batch=2, learn_linger_s=60.0, learn_poll_s=60.0)
    first = make_service(sqlite_url, settings=slow)
    bullet = seed_bullet(first)
    for i in range(11):
        first.submit(trajectory(i, bullet))
    first.close()  # what its worker did not learn stays queued
    pending = [r for r in first.learn_queue("twin-a") if r.state == "pending"]
    assert len(pending) > 2 * slow.learn_batch  # several rounds' worth

    second = make_service(sqlite_url, settings=slow)
    second.start_learning()
    deadline = time.monotonic() + 30
    states = [r.state for r in second.learn_queue("twin-a")]
    while "pending" in states and time.monotonic() < deadline:
        time.sleep(0.1)
        states = [r.state for r in second.learn_queue("twin-a")]
    assert states == ["done"] * 11
    assert second.learning_stats()["batches"] >= len(pending) // slow.learn_batch
    second.close()
