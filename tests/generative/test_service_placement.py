"""The service places its experts from measured traffic: each MoE layer from the traffic
stored for every capsule at start, rebalanced online when a window's measured max/mean passes
the threshold, with nodes added or removed on demand or by `placement|expand --apply`; the
answers stay the same through every change."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from pydantic import ValidationError

from tests.generative.conftest import mask_experts, shipped_shape
from tests.support import run_cli
from trifecta.core.db import get_engine
from trifecta.core.errors import InvalidInput, NotFound
from trifecta.core.tasks import generate_tasks
from trifecta.generative.model import DiffusionLM
from trifecta.generative.placement import round_robin
from trifecta.generative.selection import configured_mask
from trifecta.generative.service import GenerativeRequest, GenerativeService
from trifecta.generative.settings import GenerativeSettings
from trifecta.generative.store import GenerativeStore

QUIET = {"rebalance_threshold": None}  # no online rebalance unless a test asks for one


class RebalanceArgs(TypedDict, total=False):
    """Keyword arguments of `GenerativeService.rebalance` a bad-input case passes."""

    loads: NDArray[np.float64]
    layers: list[int]
    add: int
    remove: list[int]


def _store(tmp_path: Path, name: str = "g") -> GenerativeStore:
    return GenerativeStore(get_engine(f"sqlite:///{tmp_path / name}.db"))


def _placed(
    model: DiffusionLM, store: GenerativeStore, nodes: int, slots: int, **settings: object
) -> GenerativeService:
    experts = GenerativeSettings.model_validate(
        QUIET | {"expert_nodes": nodes, "slots_per_node": slots} | settings
    )
    return GenerativeService(model, store, online_load=False, experts=experts)


def _requests(capsule: str, n: int = 6) -> list[GenerativeRequest]:
    tasks = generate_tasks(n, seed=11, split="heldout", difficulties=[3, 4])
    return [GenerativeRequest(capsule_id=capsule, prompt=t.prompt) for t in tasks]


def _tokens(service: GenerativeService, capsule: str = "c1") -> list[list[int]]:
    return [r.tokens for r in service.complete_batch(_requests(capsule))]


def _skewed(layers: int, experts: int, hot: list[int]) -> torch.Tensor:
    """Routed tokens per layer: layer l's expert hot[l] carries 8x, its neighbour 3x."""
    load = torch.full((layers, experts), 100.0)
    for layer, e in enumerate(hot):
        load[layer, e] = 800.0
        load[layer, (e + 1) % experts] = 300.0
    return load


def _one_line(err: str, field: str) -> bool:
    """The CLI's refusal: one line naming the field (the log's lines aside)."""
    lines = [line for line in err.splitlines() if "error:" in line]
    return len(lines) == 1 and f"error: {field}: " in lines[0]


def _hosted(service: GenerativeService) -> list[list[list[int]]]:
    """What each layer's nodes hold (asked of the nodes, not of the placement)."""
    return [layer.backend.hosted() for layer in service.placed]


def test_start_places_each_layer_from_the_traffic_of_every_capsule(
    shipped: DiffusionLM, tmp_path: Path
) -> None:
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    hot = [0, 5, 3][:L]
    half = _skewed(L, E, hot) / 2  # two capsules' traffic: the placement reads their sum
    store.add_traffic("a", half, 10)
    store.add_traffic("b", half, 10)
    service = _placed(shipped, store, nodes=3, slots=4)
    total = (half * 2).numpy().astype(np.float64)
    start = store.latest_placement()
    assert start is not None and start.version == service.placement_version == 1
    assert start.reason == "start: 20 requests' traffic"
    for layer, (placement, row) in enumerate(zip(service.placements, start.report, strict=True)):
        replicas = placement.replicas()
        # the hottest expert takes the redundant slots, its replicas on distinct nodes
        assert replicas[hot[layer]] >= 2 and replicas[hot[layer]] == replicas.max()
        holders = [n for n, experts in enumerate(placement.nodes) if hot[layer] in experts]
        assert len(holders) == replicas[hot[layer]]
        assert row.loads_from == "traffic" and row.after == pytest.approx(
            placement.imbalance(total[layer])
        )
        plain = round_robin(E, placement.cluster).imbalance(total[layer])
        assert row.before == pytest.approx(plain) and row.after < plain
    # each layer its own placement: the hot experts differ, so do the layouts
    assert len({tuple(map(tuple, p.nodes)) for p in service.placements}) == L
    assert _hosted(service) == [[sorted(n) for n in p.nodes] for p in service.placements]


def test_without_traffic_every_expert_weighs_the_same(shipped: DiffusionLM, tmp_path: Path) -> None:
    store = _store(tmp_path)
    service = _placed(shipped, store, nodes=2, slots=4)
    start = store.latest_placement()
    assert start is not None and start.reason == "start: no traffic"
    assert all(r.loads_from == "none" and r.after == 1.0 for r in start.report)
    assert all(sorted(len(n) for n in p.nodes) == [4, 4] for p in service.placements)


def test_rebalance_moves_fewer_experts_than_a_repack_and_answers_stay_the_same(
    shipped: DiffusionLM, tmp_path: Path
) -> None:
    L, E, _ = shipped_shape()
    plain = GenerativeService(shipped, _store(tmp_path, "plain"), online_load=False)
    store = _store(tmp_path)
    store.add_traffic("old", _skewed(L, E, [0, 0, 0][:L]), 10)
    service = _placed(shipped, store, nodes=3, slots=4)
    before = _tokens(service)
    assert before == _tokens(plain)
    store.add_traffic("new", _skewed(L, E, [6, 2, 4][:L]) * 20, 200)  # the hot set moves
    old = [p.model_copy(deep=True) for p in service.placements]
    version = service.rebalance(reason="test")
    assert version.version == 2 and service.placement_version == 2
    total = store.traffic_total()
    assert total is not None
    for layer, row in enumerate(version.report):
        assert row.after < row.before and row.loads_from == "traffic"
        assert row.scratch_moves is not None and row.moves < row.scratch_moves
        # the moves reported are the experts shipped: what the nodes lacked
        lacked = sum(
            len(set(new) - set(prev))
            for new, prev in zip(service.placements[layer].nodes, old[layer].nodes, strict=True)
        )
        assert row.moves == lacked > 0
    assert _hosted(service) == [[sorted(n) for n in p.nodes] for p in service.placements]
    assert _tokens(service) == before  # the same answers on the new placement
    stored = store.latest_placement()
    assert stored is not None and stored.layers == service.placements


def test_nodes_added_and_removed_on_a_running_service(shipped: DiffusionLM, tmp_path: Path) -> None:
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    store.add_traffic("a", _skewed(L, E, [1, 4, 7][:L]), 10)
    service = _placed(shipped, store, nodes=2, slots=5)
    before = _tokens(service)
    grown = service.rebalance(add=1, reason="expand")
    assert [p.cluster.nodes for p in service.placements] == [3] * L
    assert all(len(n) > 0 for p in service.placements for n in p.nodes)  # the new node serves
    assert all(r.moves > 0 and r.scratch_moves is not None for r in grown.report)
    assert _tokens(service) == before
    shrunk = service.rebalance(remove=[0], reason="shrink")
    assert shrunk.removed == [0] and [p.cluster.nodes for p in service.placements] == [2] * L
    assert _hosted(service) == [[sorted(n) for n in p.nodes] for p in service.placements]
    assert _tokens(service) == before


def test_online_rebalance_when_the_measured_max_mean_passes_the_threshold(
    shipped: DiffusionLM, tmp_path: Path
) -> None:
    """A capsule whose mask leaves out half the experts loads the equal-weight placement's
    nodes unevenly; the service measures it and rebalances on its own."""
    L, _, top_k = shipped_shape()
    store = _store(tmp_path)
    store.put_mask("narrow", configured_mask(mask_experts(top_k), L))
    service = _placed(
        shipped,
        store,
        nodes=3,
        slots=3,
        rebalance_threshold=1.1,
        rebalance_window_tokens=500,
        placement_check_s=3600,
    )
    start = [p.model_copy(deep=True) for p in service.placements]
    before = _tokens(service, "narrow")
    service.join_rebalance(timeout=120)
    stored = store.latest_placement()
    assert stored is not None and stored.version == 2 == service.placement_version
    assert stored.reason.startswith("online: layers")
    moved = [r for r in stored.report if r.moves]
    # a layer rebalanced was measured past the threshold, and is balanced further now
    assert moved and all(r.loads_from == "measured" and r.before > 1.1 for r in moved)
    assert all(r.after < r.before for r in moved)
    assert service.placements != start
    assert _tokens(service, "narrow") == before


def test_a_newer_stored_placement_is_followed_by_another_process(
    shipped: DiffusionLM, tmp_path: Path
) -> None:
    """Two services on one control database (two processes): one expands, the other
    follows at its next check, shipping only what its nodes lack."""
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    store.add_traffic("a", _skewed(L, E, [2, 2, 2][:L]), 10)
    first = _placed(shipped, store, nodes=2, slots=5, placement_check_s=0)
    second = _placed(shipped, _store(tmp_path), nodes=2, slots=5, placement_check_s=0)
    assert second.placement_version == first.placement_version == 1  # followed, not re-placed
    before = _tokens(second)
    first.rebalance(add=1)
    assert _tokens(second) == before  # it checks the store after this batch and follows
    assert second.placements == first.placements and second.placement_version == 2
    assert _tokens(second) == before  # on the expanded placement now
    assert _hosted(second) == [[sorted(n) for n in p.nodes] for p in first.placements]


def test_bad_placement_input_names_the_field(shipped: DiffusionLM, tmp_path: Path) -> None:
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    in_model = GenerativeService(shipped, store, online_load=False)
    with pytest.raises(InvalidInput) as err:
        in_model.rebalance()
    assert err.value.field == "expert_nodes"
    service = _placed(shipped, store, nodes=2, slots=4)
    with pytest.raises(NotFound) as missing:
        service.rebalance()  # no traffic yet
    assert missing.value.field == "loads"
    cases: list[tuple[RebalanceArgs, str]] = [
        ({"loads": np.ones((L, E)), "layers": [L]}, "layers"),
        ({"loads": np.ones((L, E + 1))}, "loads"),
        ({"loads": np.ones((L, E)), "remove": [5]}, "remove"),
        ({"loads": np.ones((L, E)), "add": -1}, "add"),
        ({"remove": [0, 0], "add": 1}, "remove"),  # a node twice
        ({"remove": [0, 1]}, "remove"),  # none left: below min_nodes (1)
        ({"add": 15}, "add"),  # 17 nodes: above max_nodes (16)
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidInput) as bad:
            service.rebalance(**kwargs)
        assert bad.value.field == field, kwargs
    assert service.placement_version == 1  # nothing applied


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"rebalance_threshold": 1.0}, "rebalance_threshold"),
        ({"rebalance_threshold": 1.2, "rebalance_target": 1.3}, "rebalance_target"),
        ({"rebalance_window_tokens": 0}, "rebalance_window_tokens"),
        ({"rebalance_time_limit_s": 0}, "rebalance_time_limit_s"),
        ({"placement_check_s": -1}, "placement_check_s"),
    ],
)
def test_bad_placement_settings_name_the_field(settings: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        GenerativeSettings.model_validate(settings)
    assert err.value.errors()[0]["loc"] == (field,)


def test_bad_settings_exit_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIFECTA_GENERATIVE_REBALANCE_THRESHOLD", "0.5")
    code, _, err = run_cli(["generative", "generate", "--capsule", "c1", "41+17?"], capsys)
    assert code == 2 and _one_line(err, "rebalance_threshold")
    code, _, err = run_cli(["generative", "placement", "--apply"], capsys)
    assert code == 2 and _one_line(err, "rebalance_threshold")


def test_placement_and_expand_apply_to_the_running_service(
    shipped: DiffusionLM, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    L, E, _ = shipped_shape()
    code, _, err = run_cli(["generative", "placement", "--apply"], capsys)
    assert code == 2 and _one_line(err, "expert_nodes")  # in the model: nothing placed
    monkeypatch.setenv("TRIFECTA_GENERATIVE_EXPERT_NODES", "2")
    monkeypatch.setenv("TRIFECTA_GENERATIVE_SLOTS_PER_NODE", "5")
    monkeypatch.setenv("TRIFECTA_GENERATIVE_PLACEMENT_CHECK_S", "0")
    monkeypatch.setenv("TRIFECTA_GENERATIVE_REBALANCE_THRESHOLD", "100")  # never online
    store = GenerativeStore()  # the control database the commands use
    service = GenerativeService(shipped, store, online_load=False)
    assert service.placement_version == 1
    code, _, err = run_cli(["generative", "placement", "--apply"], capsys)
    assert code == 2 and _one_line(err, "loads")  # no traffic to place from
    code, _, err = run_cli(["generative", "placement", "--apply", "--loads", "1,2"], capsys)
    assert code == 2 and _one_line(err, "loads")
    before = _tokens(service)
    store.add_traffic("a", _skewed(L, E, [3, 6, 1][:L]) * 10, 50)
    code, out, _ = run_cli(["generative", "placement", "--apply"], capsys)
    assert code == 0 and "placement version 2" in out and "experts moved" in out
    applied = store.latest_placement()
    assert applied is not None and any(r.moves for r in applied.report)
    assert all(r.scratch_moves is not None for r in applied.report)
    code, out, _ = run_cli(["generative", "expand", "--apply", "--add", "1"], capsys)
    assert code == 0 and "placement version 3" in out
    expanded = store.latest_placement()
    assert expanded is not None and [p.cluster.nodes for p in expanded.layers] == [3] * L
    assert _tokens(service) == before  # after this batch it follows both versions
    assert service.placement_version == 3 and service.placements == expanded.layers
    assert _tokens(service) == before  # on the three nodes now
    code, _, err = run_cli(["generative", "expand", "--apply", "--remove", "7"], capsys)
    assert code == 2 and _one_line(err, "remove")
    # The node count keeps within min_nodes..max_nodes on demand too (3 nodes now).
    monkeypatch.setenv("TRIFECTA_GENERATIVE_MIN_NODES", "3")
    monkeypatch.setenv("TRIFECTA_GENERATIVE_MAX_NODES", "3")
    code, _, err = run_cli(["generative", "expand", "--apply", "--remove", "0"], capsys)
    assert code == 2 and _one_line(err, "remove") and "below min_nodes (3)" in err
    code, _, err = run_cli(["generative", "expand", "--apply", "--add", "1"], capsys)
    assert code == 2 and _one_line(err, "add") and "above max_nodes (3)" in err
    assert store.placement_version() == 3
    code, _, err = run_cli(["generative", "expand", "--loads", "1,2"], capsys)
    assert code == 2 and _one_line(err, "placement")


def test_a_start_rebalances_the_stored_placement_on_newer_traffic(
    shipped: DiffusionLM, tmp_path: Path
) -> None:
    """A service starting beside a running one whose stored placement the traffic has
    outgrown rebalances it with the fewest moves (not from scratch); the running one follows,
    and its status shows the window it measures."""
    L, E, _ = shipped_shape()
    store = _store(tmp_path)
    running = _placed(
        shipped, store, nodes=3, slots=4, placement_check_s=0, rebalance_window_tokens=10**9
    )
    store.add_traffic("a", _skewed(L, E, [5, 1, 6][:L]) * 10, 40)
    starting = _placed(shipped, _store(tmp_path), nodes=3, slots=4)
    stored = store.latest_placement()
    assert stored is not None and stored.version == starting.placement_version == 2
    assert stored.reason == "start: rebalanced on 40 requests' traffic"
    assert all(r.scratch_moves is not None and r.moves <= r.scratch_moves for r in stored.report)
    assert sum(r.moves for r in stored.report) < sum(r.scratch_moves or 0 for r in stored.report)
    before = _tokens(running)  # it checks the store after this batch and follows
    assert running.placement_version == 2 and running.placements == starting.placements
    assert _tokens(running) == before  # on version 2 now
    status = running.placement_status()
    assert [s.layer for s in status] == list(range(L)) and all(s.version == 2 for s in status)
    assert all(s.window_tokens > 0 and s.window_max_mean >= 1.0 for s in status)
    assert _tokens(starting) == before


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def backend_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> GenerativeStore:
    """A store on a fresh SQLite file or on the test Postgres database."""
    url = (
        request.getfixturevalue("postgres_url")
        if backend == "postgres"
        else f"sqlite:///{tmp_path / 'round.db'}"
    )
    return GenerativeStore(get_engine(url))


@pytest.mark.parametrize("backend", BACKENDS)
def test_placement_versions_and_summed_traffic_round_trip(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from trifecta.generative.ray_experts import initial_placements
    from trifecta.generative.store import LayerMove

    store = backend_store(backend, request, tmp_path)
    assert store.placement_version() == 0 and store.latest_placement() is None
    assert store.traffic_total() is None
    layers = initial_placements(2, 8, 3, loads=np.arange(16.0).reshape(2, 8) + 1)
    report = [
        LayerMove(layer=i, loads_from="traffic", before=1.5, after=1.01, moves=9, scratch_moves=9)
        for i in range(2)
    ]
    store.put_placement(layers, report, "one")
    store.put_placement(layers[::-1], report, "two", removed=[2])
    assert store.placement_version() == 2
    newer = store.placements_after(1)
    assert [v.version for v in newer] == [2] and newer[0].removed == [2]
    latest = store.latest_placement()
    assert latest is not None and latest.layers == layers[::-1] and latest.report == report
    assert latest.reason == "two" and latest.created_at is not None
    assert [v.reason for v in store.placements_after(0)] == ["one", "two"]
    store.add_traffic("a", torch.ones(2, 8), 3)
    store.add_traffic("b", torch.arange(16.0).view(2, 8), 4)
    store.add_traffic("a", torch.ones(2, 8), 1)
    total = store.traffic_total()
    assert total is not None and total[1] == 8
    assert torch.equal(total[0], torch.arange(16.0).view(2, 8) + 2)
