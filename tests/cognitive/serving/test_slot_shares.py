"""Batch-slot guarantees: a flood keeps its share, the others keep room for their requests."""

from __future__ import annotations

from trifecta.cognitive.serving.slot_shares import SlotShares


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fill(
    shares: SlotShares, tenant: str, slots: int, *, share: float = 1.0, limit: int = 100
) -> int:
    """Start requests of `tenant` while allowed; how many started."""
    started = 0
    while started < limit:
        shares.arrived(tenant, share)
        if not shares.allows(tenant, slots):
            shares.started(tenant)  # (undo the arrival: count it as started, then ended)
            shares.ended(tenant)
            break
        shares.started(tenant)
        started += 1
    return started


def test_a_capsule_alone_gets_every_slot() -> None:
    assert fill(SlotShares(clock=Clock()), "solo", 16) == 16


def test_a_flood_keeps_its_share_and_leaves_the_rest_claimable() -> None:
    clock = Clock()
    shares = SlotShares(clock=clock)
    for quiet in ("q0", "q1", "q2"):
        shares.arrived(quiet, 1.0)  # active, nothing running right now
        shares.started(quiet)
        shares.ended(quiet)
    flood = fill(shares, "noisy", 16)
    assert flood == 4  # 16 slots / 4 active capsules, the rest kept for the quiet ones
    assert all(fill(shares, q, 16, limit=4) == 4 for q in ("q0", "q1", "q2"))


def test_weights_and_idle_capsules() -> None:
    clock = Clock()
    shares = SlotShares(clock=clock, activity_window_s=2.0)
    shares.arrived("gold", 3.0)
    shares.started("gold")
    shares.ended("gold")
    assert fill(shares, "bronze", 16) == 4  # 16 * 1/4
    clock.now = 10.0  # gold has been idle for longer than the window: its slots are free again
    assert fill(shares, "bronze", 16) == 12
