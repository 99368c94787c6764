"""The node count follows the measured load per node: past `expand_above` of the capacity a
node is added with a min-move rebalance, below `shrink_below` one is removed, within
`min_nodes`..`max_nodes` and a cool-down; the stored traffic decays with its half-life; a
restarted service keeps the node count an expansion left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tests.generative.conftest import shipped_shape
from tests.generative.test_service_placement import (
    BACKENDS,
    _hosted,
    _requests,
    _skewed,
    _store,
    backend_store,
)
from trifecta.core.errors import InvalidInput
from trifecta.generative.model import DiffusionLM
from trifecta.generative.ray_experts import initial_placements
from trifecta.generative.rebalance import removable_nodes
from trifecta.generative.service import GenerativeService
from trifecta.generative.settings import GenerativeSettings
from trifecta.generative.store import GenerativeStore, LayerMove, NodeScaling

CAPACITY = 1000.0  # routed tokens per node per second; the tests set the clock to reach a load
SCALING = {
    "rebalance_threshold": None,
    "node_capacity_tokens_s": CAPACITY,
    "expand_above": 0.8,
    "shrink_below": 0.3,
    "scale_window_s": 0.01,
    "scale_cooldown_s": 30.0,
    "rebalance_time_limit_s": 0.5,
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _scaled(
    model: DiffusionLM, store: GenerativeStore, nodes: int, slots: int, **settings: object
) -> tuple[GenerativeService, Clock]:
    experts = GenerativeSettings.model_validate(
        SCALING | {"expert_nodes": nodes, "slots_per_node": slots} | settings
    )
    clock = Clock()
    service = GenerativeService(model, store, online_load=False, experts=experts, clock=clock)
    return service, clock


def _serve_at(service: GenerativeService, clock: Clock, per_node: float) -> list[list[int]]:
    """Two equal batches, the clock set so the window's load per node is `per_node` routed
    tokens per second: the first batch counts its tokens inside the window, the second ends
    it (the same requests route the same tokens). Returns the first batch's tokens, decoded
    before any change."""
    requests = _requests("c1")
    first = service.complete_batch(requests)
    tokens = sum(int(np.sum(r.expert_load)) for r in first)
    clock.now += 2 * tokens / (per_node * service.nodes)
    service.complete_batch(requests)
    service.join_rebalance(timeout=300)
    return [r.tokens for r in first]


def _tokens(service: GenerativeService) -> list[list[int]]:
    return [r.tokens for r in service.complete_batch(_requests("c1"))]


def _scalings(store: GenerativeStore) -> list[NodeScaling]:
    return [v.scaling for v in store.placements_after(0) if v.scaling is not None]


def test_load_past_the_threshold_adds_a_node_with_fewer_moves_than_a_repack(
    shipped: DiffusionLM, tmp_path: Path
) -> None:
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    store.add_traffic("old", _skewed(L, E, [1, 4, 7][:L]), 10)
    service, clock = _scaled(shipped, store, nodes=2, slots=5)
    before = _serve_at(service, clock, per_node=1.2 * 0.8 * CAPACITY)
    assert service.nodes == 3 and [p.cluster.nodes for p in service.placements] == [3] * L
    stored = store.latest_placement()
    assert stored is not None and stored.version == service.placement_version == 2
    assert stored.scaling is not None and stored.reason.startswith("expand 2->3 nodes")
    scaling = stored.scaling
    assert (scaling.why, scaling.nodes_before, scaling.nodes_after) == ("expand", 2, 3)
    assert scaling.load_per_node_before == pytest.approx(0.96 * CAPACITY, rel=1e-6)
    assert scaling.load_per_node_after == pytest.approx(0.96 * CAPACITY * 2 / 3, rel=1e-6)
    assert scaling.moves == sum(r.moves for r in stored.report) > 0
    assert scaling.moves < scaling.scratch_moves  # min-move resize against the repack
    assert _hosted(service) == [[sorted(n) for n in p.nodes] for p in service.placements]
    assert _tokens(service) == before  # the same answers on three nodes


def test_load_below_the_lower_threshold_removes_a_node_within_the_bounds(
    shipped: DiffusionLM, tmp_path: Path
) -> None:
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    store.add_traffic("old", _skewed(L, E, [2, 5, 0][:L]), 10)
    # 3 nodes of 4 slots: two hold all 8 experts, so a low load leaves two however low
    service, clock = _scaled(shipped, store, nodes=3, slots=4)
    chosen = removable_nodes(service.placements, 1)
    before = _serve_at(service, clock, per_node=0.05 * CAPACITY)
    scalings = _scalings(store)
    assert [(s.why, s.nodes_before, s.nodes_after) for s in scalings] == [("shrink", 3, 2)]
    assert service.nodes == 2
    latest = store.latest_placement()
    assert latest is not None and latest.removed == chosen
    assert _hosted(service) == [[sorted(n) for n in p.nodes] for p in service.placements]
    clock.now += 100.0  # past the cool-down: still low, but two nodes are the fewest
    assert _serve_at(service, clock, per_node=0.05 * CAPACITY) == before
    assert service.nodes == 2 and len(_scalings(store)) == 1


def test_bounds_hold_the_node_count(shipped: DiffusionLM, tmp_path: Path) -> None:
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    store.add_traffic("old", _skewed(L, E, [1, 1, 1][:L]), 10)
    busy, clock = _scaled(shipped, store, nodes=2, slots=5, max_nodes=2)
    _serve_at(busy, clock, per_node=3 * CAPACITY)  # would want 8 nodes
    assert busy.nodes == 2 and _scalings(store) == []
    idle, clock = _scaled(shipped, _store(tmp_path, "idle"), nodes=3, slots=4, min_nodes=3)
    _serve_at(idle, clock, per_node=0.01 * CAPACITY)
    assert idle.nodes == 3
    with pytest.raises(InvalidInput) as err:
        _scaled(shipped, _store(tmp_path, "out"), nodes=4, slots=2, max_nodes=3)
    assert err.value.field == "expert_nodes"


def test_a_steady_load_near_the_threshold_never_flaps(shipped: DiffusionLM, tmp_path: Path) -> None:
    """Windows within 5% either side of the expansion threshold, no cool-down: one
    expansion, then the same load over three nodes stays between the thresholds. With a
    cool-down, a load that would change the count right after a change waits it out."""
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    store.add_traffic("old", _skewed(L, E, [3, 6, 2][:L]), 10)
    service, clock = _scaled(
        shipped, store, nodes=2, slots=5, scale_window_s=1.0, scale_cooldown_s=0.0
    )
    threshold = 0.8 * CAPACITY * 2  # the total routed tokens/s at which two nodes expand
    noise = np.random.default_rng(5).uniform(-0.05, 0.05, size=40)
    nodes = []
    for jitter in noise:
        clock.now += 1.0
        service.count_load(int(threshold * (1 + jitter)))
        service.join_rebalance(timeout=300)
        nodes.append(service.nodes)
    first = nodes.index(3)  # the first window past the threshold
    assert noise[first] > 0 and all(n == 2 for n in nodes[:first])
    assert all(n == 3 for n in nodes[first:])
    assert [(s.nodes_before, s.nodes_after) for s in _scalings(store)] == [(2, 3)]
    cool = _store(tmp_path, "cool")
    cool.add_traffic("old", _skewed(L, E, [3, 6, 2][:L]), 10)
    cooled, clock = _scaled(shipped, cool, nodes=2, slots=5, scale_window_s=1.0)
    for tokens, wait, nodes_after in [(2000, 1.0, 3), (1, 1.0, 3), (1, 28.0, 3), (1, 1.0, 2)]:
        clock.now += wait
        cooled.count_load(tokens)
        cooled.join_rebalance(timeout=300)
        assert cooled.nodes == nodes_after, (tokens, wait)


def test_a_restart_keeps_the_node_count(shipped: DiffusionLM, tmp_path: Path) -> None:
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    store.add_traffic("old", _skewed(L, E, [0, 3, 5][:L]), 10)
    service, _ = _scaled(shipped, store, nodes=2, slots=5)
    expanded = service.scale(3, load=5000.0, window_s=10.0)
    assert expanded.scaling is not None and expanded.scaling.load_per_node_after == 5000.0 / 3
    restarted, _ = _scaled(shipped, _store(tmp_path), nodes=2, slots=5)
    latest = store.latest_placement()
    assert restarted.nodes == 3 and latest is not None and latest.nodes == 3
    assert restarted.placements == latest.layers
    # another slot count is another shape: placed anew on the configured nodes
    other, _ = _scaled(shipped, _store(tmp_path), nodes=2, slots=6)
    assert other.nodes == 2 and other.placement_version == latest.version + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_traffic_decays_and_scaling_round_trip(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = backend_store(backend, request, tmp_path)
    hour = 3600.0
    store.add_traffic("a", torch.full((2, 8), 8.0), 4, half_life_s=hour, now=1000.0)
    store.add_traffic("b", torch.full((2, 8), 2.0), 1, half_life_s=hour, now=1000.0 + hour)
    total = store.traffic_total(half_life_s=hour, now=1000.0 + hour)
    assert total is not None and total[1] == 5
    assert torch.allclose(total[0], torch.full((2, 8), 4.0 + 2.0))  # a's halved, b's new
    later = store.traffic_total(half_life_s=hour, now=1000.0 + 3 * hour)
    assert later is not None and torch.allclose(later[0], torch.full((2, 8), 1.0 + 0.5))
    # a write decays the row it adds to: a's 8 at t, halved, plus 8 an hour later
    store.add_traffic("a", torch.full((2, 8), 8.0), 4, half_life_s=hour, now=1000.0 + hour)
    one = store.traffic("a")
    assert one is not None and torch.allclose(one[0], torch.full((2, 8), 12.0)) and one[1] == 8
    undecayed = store.traffic_total(now=1e9)  # no half-life: every token alike
    assert undecayed is not None and torch.allclose(undecayed[0], torch.full((2, 8), 14.0))
    layers = initial_placements(2, 8, 3)
    report = [
        LayerMove(layer=i, loads_from="traffic", before=1.2, after=1.0, moves=3) for i in (0, 1)
    ]
    scaling = NodeScaling(
        why="expand",
        nodes_before=2,
        nodes_after=3,
        load_per_node_before=900.0,
        load_per_node_after=600.0,
        capacity=1000.0,
        window_s=30.0,
        moves=6,
        scratch_moves=20,
    )
    store.put_placement(layers, report, "expand 2->3", scaling=scaling)
    store.put_placement(layers, report, "plain")
    first, second = store.placements_after(0)
    assert first.scaling == scaling and second.scaling is None and first.nodes == 3


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"expand_above": 0.8, "shrink_below": 0.5}, "shrink_below"),
        ({"min_nodes": 4, "max_nodes": 3}, "max_nodes"),
        ({"min_nodes": 0}, "min_nodes"),
        ({"node_capacity_tokens_s": 0}, "node_capacity_tokens_s"),
        ({"traffic_half_life_s": 0}, "traffic_half_life_s"),
        ({"scale_window_s": 0}, "scale_window_s"),
        ({"scale_cooldown_s": -1}, "scale_cooldown_s"),
    ],
)
def test_bad_scaling_settings_name_the_field(settings: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        GenerativeSettings.model_validate(settings)
    assert err.value.errors()[0]["loc"] == (field,)
