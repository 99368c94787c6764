"""Batch-slot guarantees: a flood keeps its share, the others keep room for their requests."""

from __future__ import annotations

from trifecta.cognitive.serving.slot_shares import SlotShares


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fill(
    shares: SlotShares,
    tenant: str,
    slots: int,
    *,
    share: float = 1.0,
    limit: int = 100,
    latency_slots: int | None = None,
) -> int:
    """Start requests of `tenant` while allowed; how many started."""
    started = 0
    while started < limit:
        shares.arrived(tenant, share)
        if not shares.allows(tenant, slots, latency_slots):
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
    # no margin: a flood of a few requests shows the shares' arithmetic (test_lending.py has
    # the margin, which lends a flood's first few requests idle slots)
    shares = SlotShares(clock=clock, margin_requests=0)
    for quiet in ("q0", "q1", "q2"):
        shares.arrived(quiet, 1.0)  # active, nothing running right now
        shares.started(quiet)
        shares.ended(quiet)
    flood = fill(shares, "noisy", 16)
    assert flood == 4  # 16 slots / 4 active capsules, the rest kept for the quiet ones
    assert all(fill(shares, q, 16, limit=4) == 4 for q in ("q0", "q1", "q2"))


def test_weights_and_idle_capsules() -> None:
    clock = Clock()
    shares = SlotShares(clock=clock, activity_window_s=2.0, margin_requests=0)
    shares.arrived("gold", 3.0)
    shares.started("gold")
    shares.ended("gold")
    assert fill(shares, "bronze", 16) == 4  # 16 * 1/4
    clock.now = 10.0  # gold has been idle for longer than the window: its slots are free again
    assert fill(shares, "bronze", 16) == 12


def test_a_flood_keeps_to_its_guarantee_of_the_latency_slots_while_bursts_borrow() -> None:
    """On a CPU replica whose steps allow five rows, five active capsules are guaranteed one
    each; the capsule asking for ten times the others' rate keeps to it, while a quiet capsule
    with a burst borrows the free slots."""
    clock = Clock()
    shares = SlotShares(clock=clock)
    quiet = [f"q{i}" for i in range(4)]
    for name in quiet:
        shares.arrived(name, 1.0)
        shares.started(name)
        shares.ended(name)
    for _ in range(40):  # the flood, mostly turned away (its backlog is full): still demand
        shares.refused("noisy", 1.0)
    assert fill(shares, "noisy", 16, latency_slots=5) == 1
    assert fill(shares, "q0", 16, latency_slots=5, limit=6) == 6
    # without the step-time limit, the guarantee is a fifth of all 16 slots
    assert fill(shares, "noisy", 16) == 3 - 1  # one already running


def test_equal_demand_borrows_and_alone_takes_all() -> None:
    clock = Clock()
    shares = SlotShares(clock=clock)
    shares.arrived("a", 1.0)
    shares.started("a")
    shares.ended("a")
    assert fill(shares, "b", 16, latency_slots=2, limit=2) == 2  # demand 2 of 3: under 1.5x
    clock.now = 10.0  # "a" went idle: "b" is alone
    assert fill(shares, "b", 16, latency_slots=2) == 14
