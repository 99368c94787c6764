"""Weighted fair queuing and quotas."""

from __future__ import annotations

from collections import Counter

import pytest

from trifecta.cognitive.serving.fair_queue import FairQueue, FifoQueue
from trifecta.cognitive.serving.quota import QuotaGate
from trifecta.core.errors import QuotaExceeded

SHARE_TOLERANCE = 0.05  # each backlogged capsule's service within 5% of its share


def next_tenant(queue: FairQueue[str]) -> str:
    """The tenant letter of the next item; the queue is expected to be backlogged."""
    item = queue.pop()
    assert item is not None, "a backlogged queue popped nothing"
    return item[0]


def test_backlogged_capsules_get_service_in_proportion_to_their_shares() -> None:
    queue: FairQueue[str] = FairQueue()
    shares = {"a": 1.0, "b": 2.0, "c": 4.0}
    for i in range(400):
        for tenant, share in shares.items():
            queue.push(tenant, f"{tenant}{i}", cost=10 + (i % 3), share=share)
    served = Counter(next_tenant(queue) for _ in range(700))  # all three stay backlogged
    total = sum(shares.values())
    for tenant, share in shares.items():
        assert served[tenant] / 700 == pytest.approx(share / total, rel=SHARE_TOLERANCE)


def test_a_flooding_capsule_cannot_starve_the_others() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(1000):
        queue.push("noisy", f"n{i}", cost=10, share=1.0)
    for i in range(5):
        queue.push("quiet", f"q{i}", cost=10, share=1.0)
    first = [queue.pop() for _ in range(10)]
    assert sum(item is not None and item.startswith("q") for item in first) == 5


def test_an_idle_capsule_builds_up_no_credit() -> None:
    queue: FairQueue[str] = FairQueue()
    for i in range(100):
        queue.push("busy", f"b{i}", cost=1, share=1.0)
    for _ in range(50):
        queue.pop()
    for i in range(100):
        queue.push("late", f"l{i}", cost=1, share=1.0)
    nxt = Counter(next_tenant(queue) for _ in range(40))
    assert nxt["l"] == pytest.approx(20, abs=1)  # alternates, no burst for the newcomer


def test_fifo_serves_in_arrival_order_and_removal_works() -> None:
    queue: FifoQueue[str] = FifoQueue()
    for i, tenant in enumerate("abcab"):
        queue.push(tenant, f"{tenant}{i}", cost=1, share=1.0 + i)
    assert queue.remove(lambda item: item == "c2") == "c2"
    assert [queue.pop() for _ in range(4)] == ["a0", "b1", "a3", "b4"]
    assert queue.pop() is None and len(queue) == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_quota_refuses_with_the_time_until_the_next_token() -> None:
    clock = Clock()
    gate = QuotaGate(clock=clock)
    gate.admit("acme", 2.0)
    gate.admit("acme", 2.0)  # a burst of one second's worth
    with pytest.raises(QuotaExceeded) as refused:
        gate.admit("acme", 2.0)
    assert refused.value.status == 429
    assert refused.value.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    gate.admit("acme", 2.0)
    gate.admit("other", 2.0)  # quotas are per capsule
    gate.admit("free", None)  # no quota: never refused
