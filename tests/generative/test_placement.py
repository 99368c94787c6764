"""Expert placement: memory limits, replicas, balance against the baselines, exact packing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.core.errors import InvalidInput
from trifecta.generative.placement import (
    Cluster,
    Placement,
    eplb_greedy,
    loads_from_trace,
    place,
    replication_order,
    round_robin,
)
from trifecta.generative.placement_milp import milp_pack


def zipf_loads(experts: int, exponent: float, seed: int, tokens: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, experts + 1) ** exponent
    loads = rng.multinomial(tokens, weights / weights.sum()).astype(np.float64)
    rng.shuffle(loads)
    return loads


@st.composite
def instances(draw: st.DrawFn) -> tuple[np.ndarray, Cluster]:
    experts = draw(st.integers(2, 40))
    nodes = draw(st.integers(1, 8))
    loads = np.array(draw(st.lists(st.integers(0, 10_000), min_size=experts, max_size=experts)))
    minimum = -(-experts // nodes)
    slots = draw(st.lists(st.integers(minimum, minimum + 4), min_size=nodes, max_size=nodes))
    return loads.astype(np.float64), Cluster(slots=slots)


@settings(max_examples=60, deadline=None)
@given(instances())
def test_placement_fits_memory_and_keeps_every_expert(instance: tuple[np.ndarray, Cluster]) -> None:
    loads, cluster = instance
    placement = place(loads, cluster, method="greedy")
    for experts, slots in zip(placement.nodes, cluster.slots, strict=True):
        assert len(experts) <= slots
        assert len(set(experts)) == len(experts)
    assert placement.replicas().min() >= 1
    # Never worse than the EPLB-style greedy it starts from, nor than plain round-robin.
    assert placement.imbalance(loads) <= eplb_greedy(loads, cluster).imbalance(loads) + 1e-9
    assert placement.imbalance(loads) <= round_robin(loads.size, cluster).imbalance(loads) + 1e-9


@pytest.mark.parametrize(("experts", "nodes", "exponent"), [(64, 8, 1.0), (128, 16, 1.2)])
def test_zipf_load_is_balanced_within_five_percent_with_ten_percent_redundancy(
    experts: int, nodes: int, exponent: float
) -> None:
    loads = zipf_loads(experts, exponent, seed=3)
    cluster = Cluster.with_redundancy(nodes, experts, 0.10)
    assert cluster.total_slots <= np.ceil(experts * 1.10) + nodes  # rounding up to whole nodes
    placement = place(loads, cluster)
    assert placement.imbalance(loads) <= 1.05
    assert round_robin(experts, cluster).imbalance(loads) > 1.5  # the skew is real


def test_water_filling_minimises_the_heaviest_replica() -> None:
    loads = np.array([90.0, 40.0, 30.0, 7.0])
    for extra in range(6):
        counts = np.ones(4, dtype=np.int64)
        np.add.at(counts, replication_order(loads, extra, max_replicas=4), 1)
        best = min(
            max(loads / (1 + np.array(split)))
            for split in itertools.product(range(4), repeat=4)
            if sum(split) == extra
        )
        assert max(loads / counts) == pytest.approx(best)


def test_exact_packing_matches_brute_force() -> None:
    loads = np.array([13.0, 11.0, 8.0, 7.0, 5.0, 2.0])
    cluster = Cluster.uniform(3, 2)
    counts = np.ones(6, dtype=np.int64)
    nodes = milp_pack(loads, counts, cluster, time_limit_s=10)
    assert nodes is not None
    exact = max(loads[n].sum() for n in nodes)
    brute = min(
        max(
            loads[[order[0], order[1]]].sum(),
            loads[[order[2], order[3]]].sum(),
            loads[[order[4], order[5]]].sum(),
        )
        for order in itertools.permutations(range(6))
    )
    assert exact == pytest.approx(brute) == 16.0
    small = place(loads, cluster, method="milp")
    assert max(small.node_loads(loads)) == pytest.approx(16.0)


def test_memory_gives_the_slots_and_too_little_memory_is_refused() -> None:
    assert Cluster.from_memory(4, memory_bytes=10_000, expert_bytes=3_000).slots == [3] * 4
    with pytest.raises(InvalidInput, match="memory_bytes"):
        Cluster.from_memory(4, memory_bytes=1_000, expert_bytes=3_000)
    with pytest.raises(InvalidInput, match="slots_per_node"):
        place(np.ones(10), Cluster.uniform(2, 4))


def test_a_placement_that_breaks_the_rules_is_refused() -> None:
    cluster = Cluster.uniform(2, 2)
    with pytest.raises(InvalidInput, match="holds 3 > 2"):
        Placement(cluster=cluster, num_experts=3, nodes=[[0, 1, 2], []])
    with pytest.raises(InvalidInput, match=r"without a replica: \[2\]"):
        Placement(cluster=cluster, num_experts=3, nodes=[[0], [1]])
    with pytest.raises(InvalidInput, match="twice"):
        Placement(cluster=cluster, num_experts=2, nodes=[[0, 0], [1]])


def test_trace_counts_tokens_per_expert() -> None:
    assert loads_from_trace([0, 2, 2, 1, 2], experts=4).tolist() == [1, 1, 3, 0]
    with pytest.raises(InvalidInput, match="trace"):
        loads_from_trace([0, 5], experts=4)
