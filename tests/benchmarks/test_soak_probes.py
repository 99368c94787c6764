"""The soak benchmark's probes: the LRU hit-rate simulation (with and without the proposed
doorkeeper) on streams whose answers are known, and the memory-cost probe's verdict that a
view's row costs less than the model it replaced."""

from __future__ import annotations

from benchmarks._soak_hit_rates import lru_hit_rates
from benchmarks._soak_memory_cost import memory_cost


def test_lru_hit_rates_on_known_streams() -> None:
    # a b a b ...: two distinct queries; a cache of 1 never hits, of 2 hits all but the first two.
    stream = ["a", "b"] * 5
    assert lru_hit_rates(stream, [1, 2]) == {1: 0.0, 2: 0.8}
    # With the doorkeeper a query is kept at its second ask: hits start at the fifth.
    assert lru_hit_rates(stream, [2], seen=4) == {2: 0.6}
    # One-off queries between repeats push the repeat out of a plain LRU of 2, not of the
    # doorkeeper's (they are only remembered as seen once).
    mixed = ["r", "x1", "x2", "r", "x3", "x4", "r", "x5", "x6", "r"]
    assert lru_hit_rates(mixed, [2]) == {2: 0.0}
    assert lru_hit_rates(mixed, [2], seen=8) == {2: 0.2}


def test_a_kept_memory_costs_less_as_a_row_than_as_a_model() -> None:
    cost = memory_cost(100)
    before = cost["a memory before (model, strings, index)"]
    now = cost["a memory now (row, strings, index)"]
    assert cost["MemoryTable row"] < cost["MemoryItem (validated model, its MemorySource)"] / 4
    # The float32 row of 384 numbers is the floor of either.
    assert 384 * 4 < now < before - 1000, cost
