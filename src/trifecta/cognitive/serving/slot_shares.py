"""Batch slots per capsule: how much of a tier's batch a capsule may hold while others are active.

Fair queuing decides the order in which requests start; it cannot stop a flooding capsule from
filling every batch slot the moment one frees. On a GPU that costs the others little (a decode
step takes about as long at batch 16 as at batch 4); on a CPU every extra row lengthens every
step, and a full batch leaves no slot for the next quiet request, so the quiet capsules'
latency grows with the flood. Hence a guarantee per capsule, and a limit on borrowing:

- the slots divided are the tier's *latency slots*: the rows its replicas decode within
  `1 + step_budget` of a one-row step, as measured while they run (`step_times.py`). On a GPU
  that is the whole batch; on a CPU a few rows;
- each active capsule is guaranteed its weighted share of them,
  `max(1, floor(latency_slots * share / sum of the active capsules' shares))`, and may always
  start a request while it holds fewer than that;
- beyond its guarantee a capsule may borrow any slot idle now, except those that capsules
  below their guarantee have requests *waiting* for and `spare_slots` (default 1) kept for the
  next arrival of a capsule still owed part of its guarantee, and only while its recent demand
  (the cost of the requests it sent, refused ones included, a moving average over
  `activity_window_s`) is at most `borrow_limit` times its weighted share of everyone's, plus
  `margin_requests` of its own requests (a handful more than the others, as capsules start,
  is chance, not a flood). A quiet capsule's burst borrows freely; a flood, asking for far
  more than its share, keeps to its guarantee while anyone else is active. (Demand, not
  service: held to its guarantee a flood is served about its share, so its service alone
  would not tell it from a quiet capsule.)

Lending is work-conserving among the capsules that may borrow: a slot is not held empty for
a capsule with nothing waiting. It was (every active capsule's unused guarantee was reserved),
and a quiet capsule's burst then waited in the fair queue beside idle slots, 120-340 ms in a
traced benchmark run, for arrivals of the other quiet capsules that had not come. The spare
slot starts the next such arrival at once (within one step); one that arrives to find every
slot taken starts in the next slot to free, ahead of any borrower (those are refused while it
waits below its guarantee); a 16-row batch of 8-56-token requests frees a slot about every
other decoding step. (Preempting a borrowed row at once, vLLM-style, would need the engine to
park a row's cache mid-request; not done: the full batches traced in the benchmark's slow
rounds held the flood at its one guaranteed row, the other rows quiet capsules' bursts.)

A capsule alone gets every slot. A capsule counts as active while it has requests queued or
running, or sent one within `activity_window_s` (so an occasional sender keeps its guarantee
between requests). This reserves headroom: it trades some of the flooding capsule's
throughput for everyone else's latency, on a CPU more than on a GPU. `TierPool(slot_shares=None)`
gives a purely work-conserving tier instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Tenant:
    share: float
    in_flight: int = 0
    queued: int = 0
    last_seen: float = 0.0
    demand: float = 0.0  # cost of the requests sent, decaying with the activity window
    demand_at: float = 0.0
    cost: float = 1.0  # of its last request: the unit of `margin_requests`


class SlotShares:
    """Tracks each capsule's running requests and recent activity; guards its batch slots."""

    def __init__(
        self,
        *,
        activity_window_s: float = 2.0,
        step_budget: float = 0.25,
        borrow_limit: float = 1.5,
        margin_requests: float = 4.0,
        spare_slots: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ):
        if spare_slots < 0:
            raise ValueError(f"spare_slots must be at least 0, got {spare_slots}")
        if margin_requests < 0:
            raise ValueError(f"margin_requests must be at least 0, got {margin_requests}")
        self.activity_window_s = activity_window_s
        self.step_budget = step_budget
        self.borrow_limit = borrow_limit
        self.margin_requests = margin_requests
        self.spare_slots = spare_slots
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._in_flight = 0

    def arrived(self, tenant: str, share: float, cost: float = 1.0) -> None:
        """A request of `tenant` joined the queue."""
        self.refused(tenant, share, cost)
        self._tenants[tenant].queued += 1

    def refused(self, tenant: str, share: float, cost: float = 1.0) -> None:
        """A request of `tenant` was turned away (429): it still counts as demand."""
        state = self._tenants.setdefault(tenant, _Tenant(share))
        state.share = share
        state.last_seen = self._clock()
        state.demand = self._demand(state) + cost
        state.cost = cost

    def started(self, tenant: str) -> None:
        state = self._tenants[tenant]
        state.queued -= 1
        state.in_flight += 1
        self._in_flight += 1

    def ended(self, tenant: str) -> None:
        self._tenants[tenant].in_flight -= 1
        self._in_flight -= 1

    def _demand(self, state: _Tenant) -> float:
        """The tenant's demand decayed to now (a half-life of one activity window)."""
        now = self._clock()
        state.demand *= 0.5 ** ((now - state.demand_at) / self.activity_window_s)
        state.demand_at = now
        return state.demand

    def _active(self) -> dict[str, _Tenant]:
        now = self._clock()
        active = {}
        for name, state in list(self._tenants.items()):
            if state.in_flight or state.queued or now - state.last_seen <= self.activity_window_s:
                active[name] = state
            else:
                del self._tenants[name]  # idle for a while: forget it
        return active

    def guarantees(self, slots: int) -> dict[str, int]:
        """Each active capsule's guaranteed slots out of `slots`."""
        return self._guarantees(self._active(), slots)

    @staticmethod
    def _guarantees(active: dict[str, _Tenant], slots: int) -> dict[str, int]:
        # Shares relative to the largest: finite whatever their scale (1e308 overflowed).
        top = max((state.share for state in active.values()), default=1.0)
        total = sum(state.share / top for state in active.values())
        return {
            name: max(1, math.floor(slots * (state.share / top) / total))
            for name, state in active.items()
        }

    def _over_share(self, tenant: str, active: dict[str, _Tenant]) -> bool:
        demand = {name: self._demand(state) for name, state in active.items()}
        total_share = sum(state.share for state in active.values())
        fair = sum(demand.values()) * active[tenant].share / total_share
        # Beyond the limit by more than a few of its requests: as capsules start, one that sent
        # 3 requests to the others' 1 is over 1.5x its share, and was held to its guarantee
        # beside idle slots (quiet bursts waiting up to 150 ms in the benchmark's first second).
        margin = self.margin_requests * active[tenant].cost
        return demand[tenant] > self.borrow_limit * fair + margin

    def allows(self, tenant: str, slots: int, latency_slots: int | None = None) -> bool:
        """May `tenant` start one more request on a tier of `slots` batch slots, of which
        `latency_slots` (default: all) decode within the step budget?"""
        active = self._active()
        guarantees = self._guarantees(active, latency_slots if latency_slots is not None else slots)
        if self._tenants[tenant].in_flight < guarantees.get(tenant, 1):
            return True
        if len(active) > 1 and self._over_share(tenant, active):
            return False
        # Reserved: what the others have waiting and are still owed under their guarantees,
        # plus a spare slot while anyone else is owed more (its next arrival starts at once).
        waiting = owed = 0
        for name, guarantee in guarantees.items():
            if name != tenant:
                unmet = max(0, guarantee - active[name].in_flight)
                owed += unmet
                waiting += min(active[name].queued, unmet)
        reserved = waiting + min(self.spare_slots, owed - waiting)
        return slots - self._in_flight - 1 >= reserved
