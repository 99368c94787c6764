"""Slot lending, step by step: idle slots are lent, owed ones come back first, nobody starves.

A stand-in replica advances one decoding step per `step()` (each request runs for its
`max_new_tokens` steps), so waits are counted in steps, as the engine would see them."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest

from trifecta.cognitive.serving.codec import TokenCodec
from trifecta.cognitive.serving.factory import build_engines
from trifecta.cognitive.serving.pool import LocalReplicas, TierPool
from trifecta.cognitive.serving.requests import (
    CollectingSink,
    Completion,
    EngineRequest,
    ReplicaLoad,
    SamplingParams,
)
from trifecta.cognitive.serving.slot_shares import SlotShares
from trifecta.core.errors import QuotaExceeded


@pytest.fixture(scope="module")
def codec(tiny: tuple[Any, Any]) -> TokenCodec:
    return TokenCodec(tiny[1])


class StepReplica:
    """A `Dispatcher` of `slots` rows that decodes one token per row per `step()`."""

    def __init__(self, slots: int, latency_slots: int | None = None):
        self.max_batch = slots
        self.latency = slots if latency_slots is None else latency_slots
        self.now = 0
        self.running: dict[str, tuple[EngineRequest, int]] = {}  # id -> (request, steps left)
        self.started: dict[str, int] = {}  # request id -> the step it started at

    def has_room(self) -> bool:
        return len(self.running) < self.max_batch

    def slots(self) -> int:
        return self.max_batch

    def latency_slots(self, budget: float) -> int:
        return self.latency

    def send(self, request: EngineRequest) -> None:
        assert self.has_room()
        self.running[request.request_id] = (request, request.params.max_new_tokens)
        self.started[request.request_id] = self.now

    def cancel(self, request_id: str) -> None:
        raise AssertionError("no test here cancels")

    def loads(self) -> list[ReplicaLoad]:
        return [ReplicaLoad("step", len(self.running), 0, self.max_batch)]

    def close(self) -> None:
        self.running.clear()

    def step(self) -> None:
        self.now += 1
        done = []
        for key, (request, left) in list(self.running.items()):
            if left <= 1:
                done.append(request)
                del self.running[key]
            else:
                self.running[key] = (request, left - 1)
        for request in done:  # after the batch is updated: finishing dispatches the next
            tokens = request.params.max_new_tokens
            request.sink.finish(Completion("length", len(request.prompt_ids), tokens))


class Tier:
    """A `TierPool` over a `StepReplica`, with every request's arrival step kept."""

    def __init__(self, codec: TokenCodec, slots: int, *, latency_slots: int | None = None):
        self.replica = StepReplica(slots, latency_slots)
        self.shares = SlotShares(clock=lambda: 0.0)
        self.pool = TierPool(
            "step", self.replica, codec, context_length=64, slot_shares=self.shares
        )
        self.arrived: dict[str, tuple[str, int]] = {}  # request id -> (capsule, step)
        self.sinks: list[CollectingSink] = []

    def send(self, capsule: str, steps: int, share: float = 1.0) -> EngineRequest:
        sink = CollectingSink()
        request = EngineRequest(
            [1, 2, 3], SamplingParams(max_new_tokens=steps), sink, capsule=capsule
        )
        self.arrived[request.request_id] = (capsule, self.replica.now)
        self.pool.submit(request, share=share)  # a 429 raises here: not kept below
        self.sinks.append(sink)
        return request

    def running(self, capsule: str) -> int:
        return sum(1 for r, _ in self.replica.running.values() if r.capsule == capsule)

    def waits(self, capsule: str) -> list[int]:
        """Steps each started request of `capsule` waited in the queue."""
        return [
            self.replica.started[key] - at
            for key, (name, at) in self.arrived.items()
            if name == capsule and key in self.replica.started
        ]


def quiet_capsules_active(tier: Tier, names: list[str]) -> None:
    """Each has sent 30 requests that have ended: active, with equal demand, nothing running."""
    for name in names:
        for _ in range(30):
            tier.send(name, 10)
    while tier.replica.running or tier.pool.queued():
        tier.replica.step()


def test_a_burst_borrows_the_slots_other_capsules_have_nothing_waiting_for(
    codec: TokenCodec,
) -> None:
    """Four active capsules are guaranteed 4 of 16 slots each; three have nothing waiting, so
    the fourth's burst takes every slot but the spare one. (Reserving their unused guarantees,
    as before, held 12 slots idle and kept the burst to its own 4.)"""
    tier = Tier(codec, 16)
    quiet_capsules_active(tier, ["q0", "q1", "q2", "q3"])
    for _ in range(20):
        tier.send("q0", 10)
    assert tier.running("q0") == 15
    assert tier.pool.queued() == 5


def test_a_guaranteed_capsule_gets_its_slot_within_one_step_of_arriving(codec: TokenCodec) -> None:
    """With every slot but the spare lent to a burst, an owed capsule's arrival starts in the
    same dispatch; the next owed arrivals, finding the batch full, take the next slots to free
    ahead of the borrower's backlog."""
    tier = Tier(codec, 16)
    quiet_capsules_active(tier, ["q0", "q1", "q2", "q3"])
    burst_at = tier.replica.now
    for _ in range(20):
        tier.send("q0", 10)
    first = tier.send("q1", 10)
    assert tier.replica.started[first.request_id] == tier.replica.now  # no step waited
    late = [tier.send(name, 10) for name in ("q2", "q2", "q3")]
    assert len(tier.replica.running) == 16
    assert all(r.request_id not in tier.replica.started for r in late)
    while any(r.request_id not in tier.replica.started for r in late):
        tier.replica.step()
    late_start = max(tier.replica.started[r.request_id] for r in late)
    q0_after = [
        tier.replica.started[key]
        for key, (name, at) in tier.arrived.items()
        if name == "q0" and at == burst_at and tier.replica.started.get(key, -1) > burst_at
    ]
    assert q0_after and min(q0_after) >= late_start  # the borrower's next start came after


def test_a_flood_keeps_to_its_guarantee_while_quiet_bursts_borrow(codec: TokenCodec) -> None:
    """Latency slots 5 among five capsules: the flood, asking for ten times what each other
    capsule did, runs one row once its demand shows; a quiet burst still borrows idle slots."""
    tier = Tier(codec, 16, latency_slots=5)
    quiet_capsules_active(tier, ["q0", "q1", "q2", "q3"])
    for _ in range(300):
        tier.send("noisy", 10)
    # its first requests looked like a burst and borrowed; once they end, it keeps to one row
    for _ in range(10):
        tier.replica.step()
    assert tier.running("noisy") == 1
    for _ in range(8):
        tier.send("q0", 10)
    assert tier.running("q0") == 8


def test_no_capsule_starves_and_quiet_waits_stay_short(codec: TokenCodec) -> None:
    """2,000 steps of a flood (two requests a step, most turned away once its backlog is
    full), a capsule of weight 3 and three quiet ones arriving in random bursts: everyone's
    requests all finish; the flood is served all along; no other capsule waits longer than
    the longest request runs."""
    rng = random.Random(7)
    tier = Tier(codec, 16, latency_slots=6)
    flood = []
    for step in range(2000):
        for _ in range(2):
            with contextlib.suppress(QuotaExceeded):  # its backlog full: a 429, still demand
                flood.append(tier.send("noisy", rng.randint(4, 20)))
        if rng.random() < 0.03:
            tier.send("gold", rng.randint(4, 20), share=3.0)
        for name in ("q0", "q1", "q2"):
            if rng.random() < 0.01:
                for _ in range(rng.randint(1, 6)):  # a burst
                    tier.send(name, rng.randint(4, 20))
        tier.replica.step()
        if step % 500 == 499:  # the flood progressed during each quarter
            served = sum(1 for r in flood if r.request_id in tier.replica.started)
            assert served >= (step + 1) // 20
    while tier.replica.running or tier.pool.queued():
        tier.replica.step()
    assert all(sink.finished(timeout=0) for sink in tier.sinks)
    for name in ("gold", "q0", "q1", "q2"):
        waits = tier.waits(name)
        assert waits and max(waits) <= 20, (name, max(waits))


def test_spare_slots_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="spare_slots"):
        SlotShares(spare_slots=-1)


def test_lending_changes_no_tokens(tiny: tuple[Any, Any]) -> None:
    """The same bursty requests through a real replica with slot shares (lending) and without
    (purely work-conserving) decode exactly the same tokens."""
    model, tokenizer = tiny
    codec = TokenCodec(tokenizer)
    outputs = []
    for shares in (SlotShares(), None):
        engines = build_engines(model, codec, tier="small", replicas=1, max_batch=4)
        pool = TierPool(
            "small",
            LocalReplicas(engines, queue_depth=0),
            codec,
            context_length=64,
            slot_shares=shares,
        )
        sinks: list[CollectingSink] = []
        try:
            for i in range(12):
                for capsule in ("noisy", "noisy", "noisy", f"q{i % 3}"):
                    sink = CollectingSink()
                    params = SamplingParams(max_new_tokens=3 + i % 5, ignore_eos=True)
                    pool.submit(
                        EngineRequest(
                            codec.encode(f"{i}+{len(sinks)}?"), params, sink, capsule=capsule
                        )
                    )
                    sinks.append(sink)
            outputs.append([[t.token_id for t in sink.wait(timeout=60)[0]] for sink in sinks])
        finally:
            pool.close()
    assert outputs[0] == outputs[1]
    assert all(len(tokens) == 3 + (i // 4) % 5 for i, tokens in enumerate(outputs[0]))


def test_capsules_starting_together_borrow_beside_idle_slots(codec: TokenCodec) -> None:
    """Four capsules start at once on latency slots 3 (a guarantee of one row each); one sends
    a burst of 3 while the others send one each. Its demand is 3 of 6 requests, over 1.5x its
    share, but by two requests, not a flood's margin: it borrows two idle slots and starts
    at once. (Without the margin it was held to one row beside 12 idle slots: in the serving
    benchmark quiet bursts waited up to 150 ms in each run's first second.)"""
    tier = Tier(codec, 16, latency_slots=3)
    for name in ("q1", "q2", "q3"):
        tier.send(name, 10)
    burst = [tier.send("q0", 10) for _ in range(3)]
    assert all(r.request_id in tier.replica.started for r in burst)
    assert tier.waits("q0") == [0, 0, 0]


def test_a_flood_is_held_once_beyond_the_margin(codec: TokenCodec) -> None:
    """The margin is a few requests: a capsule sending 12 to the others' one each borrows
    while its k requests are within 1.5 x (k + 3) / 4 + 4 of them (k <= 8), then waits for
    its own rows to end while everyone else still starts at once."""
    tier = Tier(codec, 16, latency_slots=8)
    for name in ("q1", "q2", "q3"):
        tier.send(name, 10)
    for _ in range(12):
        tier.send("noisy", 10)
    assert tier.running("noisy") == 8
    assert tier.pool.queued() == 4
    late = tier.send("q1", 10)
    assert late.request_id in tier.replica.started


def test_margin_requests_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="margin_requests"):
        SlotShares(margin_requests=-1)
