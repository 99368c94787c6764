"""Batch slots per capsule: how much of a tier's batch a capsule may hold while others are active.

Fair queuing decides the order in which requests start; it cannot stop a flooding capsule from
filling every batch slot the moment one frees. On a GPU that costs the others little (a decode
step takes about as long at batch 16 as at batch 4); on a CPU every extra row lengthens every
step, and a full batch leaves no slot for the next quiet request, so the quiet capsules'
latency grows with the flood. Hence a guarantee per capsule:

- each active capsule is guaranteed its weighted share of the slots,
  `cap = max(1, floor(slots * share / sum of the active capsules' shares))`, and may always
  start a request while it holds fewer than that;
- beyond its guarantee a capsule may take only slots that no other active capsule could still
  claim under its own guarantee.

A capsule alone gets every slot; a flood gets its share plus what nobody else can claim, and
the slots the quiet capsules have not used yet stay free for their next requests. A capsule
counts as active while it has requests queued or running, or sent one within
`activity_window_s` (so an occasional sender keeps its guarantee between requests). This
reserves headroom: it trades some of the flooding capsule's throughput for everyone else's
latency. `TierPool(slot_shares=None)` gives a purely work-conserving tier instead.
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


class SlotShares:
    """Tracks each capsule's running requests and recent activity; guards its batch slots."""

    def __init__(
        self, *, activity_window_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ):
        self.activity_window_s = activity_window_s
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._in_flight = 0

    def arrived(self, tenant: str, share: float) -> None:
        state = self._tenants.setdefault(tenant, _Tenant(share))
        state.share = share
        state.queued += 1
        state.last_seen = self._clock()

    def started(self, tenant: str) -> None:
        state = self._tenants[tenant]
        state.queued -= 1
        state.in_flight += 1
        self._in_flight += 1

    def ended(self, tenant: str) -> None:
        self._tenants[tenant].in_flight -= 1
        self._in_flight -= 1

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
        active = self._active()
        total = sum(state.share for state in active.values())
        return {
            name: max(1, math.floor(slots * state.share / total)) for name, state in active.items()
        }

    def allows(self, tenant: str, slots: int) -> bool:
        """May `tenant` start one more request on a tier of `slots` batch slots?"""
        guarantees = self.guarantees(slots)
        if self._tenants[tenant].in_flight < guarantees.get(tenant, 1):
            return True
        claimable = sum(
            max(0, guarantee - self._tenants[name].in_flight)
            for name, guarantee in guarantees.items()
            if name != tenant
        )
        return slots - self._in_flight - 1 >= claimable
