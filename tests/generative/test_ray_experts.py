"""Experts executed where the placement puts them: in-process, and as Ray actors on a local
two-node Ray cluster whose head and worker each run in a network namespace of the test's own
(joined by a veth pair), one actor per placement node. Outputs equal the model's own layer,
with every expert and under a capsule's mask, dropped or merged; the calls each node gets are
recorded, so a masked expert is seen never to reach one.

Run as a script (`python tests/generative/test_ray_experts.py ADDRESS OUT`) it is the driver
that the Ray test starts inside the head's namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, NotRequired, TypedDict, cast

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trifecta.core.errors import InvalidInput
from trifecta.generative.expansion import resize
from trifecta.generative.expert_nodes import (
    Batches,
    LocalBackend,
    NodeBackend,
    RayBackend,
    Variants,
    Weights,
)
from trifecta.generative.model import DiffusionConfig, Expert, MoE, Routing
from trifecta.generative.placement import Cluster, place
from trifecta.generative.ray_experts import PlacedMoE
from trifecta.generative.selection import ExpertMask, half_mask

HERE = Path(__file__).resolve()
# The cluster lives in the test's own namespaces, reachable only through their veth pair; a
# token another local Ray left in ~/.ray would otherwise switch its auth on half-way.
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def seeded_layer(seed: int = 0) -> MoE:
    torch.manual_seed(seed)
    layer = MoE(DiffusionConfig(d_model=32, d_ff=48, n_experts=8, top_k=2), layer=0)
    layer.selection_bias.copy_(torch.linspace(-0.2, 0.2, 8))  # routing uses the bias too
    return layer.eval()


def reference(
    layer: MoE,
    x: torch.Tensor,
    counted: torch.Tensor | None = None,
    routing: Routing | None = None,
) -> torch.Tensor:
    if counted is None:
        counted = torch.ones(x.shape[:-1], dtype=torch.bool)
    with torch.no_grad():
        return layer(x, counted, routing)


LOADS = np.array([900, 50, 400, 60, 300, 70, 200, 20], dtype=np.float64)
DROPPED = ExpertMask(layers=[[0, 2, 5]])  # top-2 of 3: the layer's dense path in process
WIDE = ExpertMask(layers=[[0, 1, 3, 5, 6]])  # 5 of 8: the dispatch in process


def merged_mask(layer: MoE) -> ExpertMask:
    """The half mask with each dropped expert merged into the kept one of the closest router
    row, weighted by usage (`selection.merge_plan`)."""
    load = torch.tensor(LOADS, dtype=torch.float32)[None]
    return half_mask(load, 1, layer.top_k, layer.router.weight.detach()[None])


def routing_of(mask: ExpertMask) -> Routing:
    return Routing(
        bias=torch.linspace(0.1, -0.1, 8)[None],  # a capsule's biases on top of the layer's
        active=mask.active(8),
        merge=mask.merge_tensor(),
    )


class Recorder:
    """Every batch the placed layer sends a node: (node, expert, variant or None, tokens).
    It takes the layer's backend's place and hands every call on to it (`inner`)."""

    def __init__(self, placed: PlacedMoE):
        self.calls: list[tuple[int, int, str | None, int]] = []
        self.inner: NodeBackend = placed.backend
        placed.backend = self

    def experts(self) -> set[int]:
        return {e for _, e, _, _ in self.calls}

    def run(self, per_node: Sequence[Batches], variants: Sequence[Variants]) -> list[Batches]:
        for node, (batches, tags) in enumerate(zip(per_node, variants, strict=True)):
            self.calls += [(node, e, tags.get(e), len(x)) for e, x in batches.items()]
        return self.inner.run(per_node, variants)

    def load(self, node: int, expert: int, state: Weights) -> None:
        self.inner.load(node, expert, state)

    def load_variant(self, node: int, expert: int, tag: str, state: Weights) -> None:
        self.inner.load_variant(node, expert, tag, state)

    def drop_variant(self, node: int, expert: int, tag: str) -> None:
        self.inner.drop_variant(node, expert, tag)

    def drop(self, node: int, expert: int) -> None:
        self.inner.drop(node, expert)

    def hosted(self) -> list[list[int]]:
        return self.inner.hosted()

    def hosted_variants(self) -> list[list[tuple[int, str]]]:
        return self.inner.hosted_variants()

    def add_node(self) -> None:
        self.inner.add_node()

    def remove_nodes(self, indices: Sequence[int]) -> None:
        self.inner.remove_nodes(indices)


def on_ray(placed: PlacedMoE) -> RayBackend:
    """The layer's Ray backend (it was placed with a `ray_address`)."""
    assert isinstance(placed.backend, RayBackend), "a layer placed with a Ray address"
    return placed.backend


Masking = Literal["dropped", "wide", "merged"]
MASKINGS: tuple[Masking, ...] = ("dropped", "wide", "merged")


class MaskedRow(TypedDict):
    """One capsule mask's forward on placed nodes against the layer's own."""

    max_abs_diff: float
    output: list[float]
    sent: list[int]  # the experts any node was sent tokens of
    variants: list[tuple[int, str]]  # (expert, merged variant) that ran on a node
    tokens_sent: int
    kept: list[int]  # the mask's experts


class MaskedReport(TypedDict):
    dropped: MaskedRow
    wide: MaskedRow
    merged: MaskedRow
    hosted_variants: list[list[tuple[int, str]]]
    holders: list[list[int]]
    merged_after_expand: float


class PlacedReport(TypedDict):
    """The placed layer through an expansion and a shrink against the layer's own output."""

    max_abs_diff: float
    max_abs_diff_after_expand: float
    max_abs_diff_after_shrink: float
    shipped: list[int]  # the experts `apply` shipped, per resize
    planned_moves: list[int]  # the moves the planner counted, per resize
    hosted: list[list[list[int]]]  # per resize, the experts each node holds
    planned: list[list[list[int]]]
    output: list[float]
    actor_nodes: NotRequired[list[str]]  # on Ray only: the Ray node of each actor


def masked_outputs(address: str | None) -> MaskedReport:
    """The seeded layer under a dropped and a merged capsule mask, placed (here, or on Ray at
    `address`) and in the layer itself, with padding in the batch; then the merged mask
    again after an expansion."""
    layer = seeded_layer()
    x = torch.randn(3, 12, 32, generator=torch.Generator().manual_seed(5))
    counted = torch.ones(3, 12, dtype=torch.bool)
    counted[0, :4] = False  # a left-padded request
    placed = PlacedMoE(layer, place(LOADS, Cluster.uniform(2, 5)), ray_address=address)
    recorder = Recorder(placed)

    def row(mask: ExpertMask) -> MaskedRow:
        routing, expected_routing = routing_of(mask), routing_of(mask)
        start = len(recorder.calls)
        out = placed.forward(x, counted, routing)
        expected = reference(layer, x, counted, expected_routing)
        assert routing.load is None and expected_routing.load is None  # no full model here
        calls = recorder.calls[start:]
        return {
            "max_abs_diff": float((out - expected).abs().max()),
            "output": out.flatten()[:96].tolist(),
            "sent": sorted({e for _, e, _, _ in calls}),
            "variants": sorted({(e, tag) for _, e, tag, _ in calls if tag is not None}),
            "tokens_sent": sum(n for *_, n in calls),
            "kept": mask.layers[0],
        }

    merged = merged_mask(layer)
    dropped, wide, merged_row = row(DROPPED), row(WIDE), row(merged)
    hosted_variants = placed.backend.hosted_variants()
    holders = [sorted(n) for n in placed.placement.nodes]
    grown = resize(placed.placement, LOADS, add=1, target=1.0)
    placed.apply(grown.placement)
    after = placed.forward(x, counted, routing_of(merged))
    expected_after = reference(layer, x, counted, routing_of(merged))
    return {
        "dropped": dropped,
        "wide": wide,
        "merged": merged_row,
        "hosted_variants": hosted_variants,
        "holders": holders,
        "merged_after_expand": float((after - expected_after).abs().max()),
    }


def placed_outputs(address: str | None) -> PlacedReport:
    """Run the seeded layer in-process and on its placement (here, or on Ray at `address`)."""
    layer = seeded_layer()
    x = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(1))
    loads = np.array([900, 50, 400, 60, 300, 70, 200, 20], dtype=np.float64)
    placement = place(loads, Cluster.uniform(2, 5))
    placed = PlacedMoE(layer, placement, ray_address=address)
    out = placed.forward(x)
    grown = resize(placement, loads, add=1, target=1.0)
    shipped = placed.apply(grown.placement)
    after = placed.forward(x)
    hosted = placed.backend.hosted()
    shrunk = resize(grown.placement, loads, remove=[0], target=1.0)
    shipped_shrink = placed.apply(shrunk.placement, removed=[0])
    after_shrink = placed.forward(x)
    expected = reference(layer, x)
    report: PlacedReport = {
        "max_abs_diff": float((out - expected).abs().max()),
        "max_abs_diff_after_expand": float((after - expected).abs().max()),
        "max_abs_diff_after_shrink": float((after_shrink - expected).abs().max()),
        "shipped": [shipped, shipped_shrink],
        "planned_moves": [grown.moves, shrunk.moves],
        "hosted": [hosted, placed.backend.hosted()],
        "planned": [[sorted(n) for n in p.placement.nodes] for p in (grown, shrunk)],
        "output": out.flatten()[:64].tolist(),
    }
    if address is not None:
        report["actor_nodes"] = on_ray(placed).actor_nodes()
    return report


def test_in_process_placed_layer_equals_the_model_layer_through_expand_and_shrink() -> None:
    report = placed_outputs(None)
    assert report["max_abs_diff"] < 1e-6
    assert report["max_abs_diff_after_expand"] < 1e-6
    assert report["max_abs_diff_after_shrink"] < 1e-6
    assert report["shipped"] == report["planned_moves"]
    assert 0 not in report["planned_moves"]  # both resizes moved experts
    assert report["hosted"] == report["planned"]


@settings(max_examples=15, deadline=None)
@given(
    loads=st.lists(st.integers(0, 1000), min_size=8, max_size=8),
    nodes=st.integers(1, 5),
    spare=st.integers(0, 3),
)
def test_any_placement_gives_the_layer_output(loads: list[int], nodes: int, spare: int) -> None:
    layer = seeded_layer(seed=3)
    cluster = Cluster.uniform(nodes, -(-8 // nodes) + spare)
    placed = PlacedMoE(layer, place(np.array(loads, dtype=np.float64), cluster, "greedy"))
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(placed.forward(x), reference(layer, x), atol=1e-6)


def test_a_masked_capsule_on_placed_nodes_equals_the_masked_layer() -> None:
    report = masked_outputs(None)
    counted_tokens = 3 * 12 - 4
    for name in MASKINGS:
        row = report[name]
        assert row["max_abs_diff"] < 1e-6, name
        assert set(row["sent"]) <= set(row["kept"]), name  # no masked expert reached a node
        assert row["tokens_sent"] == counted_tokens * 2  # padding is never sent; top-2
    merged = report["merged"]
    assert merged["variants"]  # the merge's experts ran merged
    assert {e for e, _ in merged["variants"]} <= set(merged["kept"])
    assert report["merged_after_expand"] < 1e-6


def test_merged_experts_run_with_the_merged_weights_on_the_nodes_that_hold_them() -> None:
    layer = seeded_layer()
    mask = merged_mask(layer)
    placed = PlacedMoE(layer, place(LOADS, Cluster.uniform(3, 4)))
    assert placed.prepare(mask) > 0  # shipped before the first request
    recorder = Recorder(placed)
    x = torch.randn(2, 20, 32, generator=torch.Generator().manual_seed(6))
    placed.forward(x, None, routing_of(mask))
    merge = mask.merge_tensor()
    assert merge is not None
    changed = {e for e in mask.layers[0] if int((merge[0, e] != 0).sum()) > 1}
    assert changed  # the plan merged something into some kept expert
    local = recorder.inner
    assert isinstance(local, LocalBackend), "placed without a Ray address: in this process"
    gates = [cast(Expert, layer.experts[j]).gate_proj.weight.detach() for j in range(8)]
    for node, e, tag, _ in recorder.calls:
        assert (tag is not None) == (e in changed)  # merged experts ran as their variant
        if tag is not None:
            module = local.nodes[node].variants[(e, tag)]
            assert isinstance(module, Expert), "a merged variant is an expert's module"
            by_hand = sum(
                (float(merge[0, e, j]) * w for j, w in enumerate(gates)), torch.zeros_like(gates[0])
            )
            assert torch.allclose(module.gate_proj.weight, by_hand, atol=1e-6)
    # every variant on a node is of an expert that node holds
    for node, variants in enumerate(placed.backend.hosted_variants()):
        assert {e for e, _ in variants} <= set(placed.placement.nodes[node])
    assert placed.prepare(mask) == 0  # already there
    dropped_only = mask.model_copy(update={"merge": None})
    unmerged = placed.forward(x, None, routing_of(dropped_only))
    assert not torch.allclose(placed.forward(x, None, routing_of(mask)), unmerged, atol=1e-4)


def test_experts_outside_the_mask_are_never_computed_on_any_node() -> None:
    layer = seeded_layer()
    with torch.no_grad():  # poisoned: a node that computed one would return NaN
        for e in set(range(8)) - set(DROPPED.layers[0]):
            cast(Expert, layer.experts[e]).gate_proj.weight.fill_(float("nan"))
    placed = PlacedMoE(layer, place(LOADS, Cluster.uniform(2, 5)))
    x = torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(7))
    out = placed.forward(x, None, routing_of(DROPPED))
    assert bool(torch.isfinite(out).all())
    assert not bool(torch.isfinite(placed.forward(x)).all())  # every expert: NaN reached


def test_a_mask_naming_an_expert_the_placement_lacks_is_refused_naming_the_field() -> None:
    layer = seeded_layer()
    placed = PlacedMoE(layer, place(LOADS, Cluster.uniform(2, 5)))
    x = torch.randn(1, 4, 32)
    wider = Routing(active=torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(InvalidInput, match="expert 8 is not placed") as err:
        placed.forward(x, None, wider)
    assert err.value.field == "experts"
    with pytest.raises(InvalidInput) as err:
        placed.forward(x, None, Routing(active=torch.ones(1, 7, dtype=torch.bool)))
    assert err.value.field == "experts"
    with pytest.raises(InvalidInput, match="expert 9") as err:
        placed.prepare(ExpertMask(layers=[[0, 1, 9]]))
    assert err.value.field == "experts"


def service_outputs(address: str | None, db: Path) -> dict[str, object]:
    """The generative service on the shipped model, as the product builds it: with
    `ray_address` set its MoE layers' experts run as Ray actors (one placement node per
    alive Ray node), else in the model. Each capsule's response tokens and expert loads."""
    from trifecta.core.db import get_engine
    from trifecta.core.tasks import generate_tasks
    from trifecta.generative.artifact import load_model
    from trifecta.generative.assets import shipped_model_path
    from trifecta.generative.selection import configured_mask
    from trifecta.generative.service import GenerativeRequest, GenerativeService
    from trifecta.generative.settings import GenerativeSettings
    from trifecta.generative.store import GenerativeStore

    model = load_model(shipped_model_path())
    c = model.config
    store = GenerativeStore(get_engine(f"sqlite:///{db}"))
    store.put_mask("c-drop", configured_mask([0, 2, 5, 6, 7][: c.top_k + 1], c.n_layers))
    load = torch.arange(c.n_layers * c.n_experts, dtype=torch.float32).view(c.n_layers, -1) + 1
    store.put_mask("c-merge", half_mask(load, 4, c.top_k, model.router_weights()))
    settings = GenerativeSettings(ray_address=address)
    service = GenerativeService(model, store, online_load=False, experts=settings)
    tasks = generate_tasks(4, seed=11, split="heldout", difficulties=[2, 3])
    report: dict[str, object] = {"nodes": [p.cluster.nodes for p in service.placements]}
    for capsule in ("c-all", "c-drop", "c-merge"):
        requests = [GenerativeRequest(capsule_id=capsule, prompt=t.prompt) for t in tasks]
        responses = service.complete_batch(requests)
        report[capsule] = [[r.tokens, r.expert_load] for r in responses]
    if address is not None:
        report["actor_nodes"] = [on_ray(layer).actor_nodes() for layer in service.placed]
        # A node added to the running service (an actor more), rebalanced on skewed load:
        # the same answers after.
        skew = np.ones((c.n_layers, c.n_experts))
        skew[:, 0] = 8.0
        grown = service.rebalance(loads=skew, add=1, reason="test: expand")
        report["grown"] = {
            "nodes": [p.cluster.nodes for p in service.placements],
            "moves": [r.moves for r in grown.report],
            "planned": [[sorted(n) for n in p.nodes] for p in service.placements],
            "hosted": [layer.backend.hosted() for layer in service.placed],
            "actors": [len(on_ray(layer).actor_nodes()) for layer in service.placed],
        }
        for capsule in ("c-all", "c-drop", "c-merge"):
            requests = [GenerativeRequest(capsule_id=capsule, prompt=t.prompt) for t in tasks]
            responses = service.complete_batch(requests)
            report[f"{capsule} grown"] = [[r.tokens, r.expert_load] for r in responses]
    return report


def test_a_ray_address_nothing_answers_is_one_clear_error() -> None:
    from trifecta.core.errors import Unavailable
    from trifecta.generative.expert_nodes import connect_ray

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(Unavailable) as err:
        connect_ray(f"127.0.0.1:{port}")
    assert err.value.field == "ray_address" and time.monotonic() - started < 10


def test_tokens_split_evenly_over_replicas() -> None:
    layer = seeded_layer()
    placement = place(np.array([1000.0, *[10.0] * 7]), Cluster.uniform(3, 4))
    assert placement.replicas()[0] == 3  # the hot expert is on every node
    placed = PlacedMoE(layer, placement)
    placed.forward(torch.randn(2, 30, 32, generator=torch.Generator().manual_seed(2)))
    assert placed.node_tokens.sum() == 2 * 30 * 2  # every (token, chosen expert) once


# --- the Ray cluster in network namespaces ------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _pids(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def _end_processes(namespace: str) -> None:
    """End the processes in a namespace this test made (Ray's, started by the test)."""
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        for pid in _pids(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while _pids(namespace) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str, str, str]]:
    """(head namespace, worker namespace, head ip, worker ip), linked by a veth pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create network namespaces")
    tag = uuid.uuid4().hex[:6]
    names = (f"trif-rh-{tag}", f"trif-rw-{tag}")
    subnet = f"10.{int(tag[:2], 16)}.{int(tag[2:4], 16)}"
    ips = (f"{subnet}.1", f"{subnet}.2")
    for name in names:
        _ip("netns", "add", name)
    try:
        _ip("link", "add", f"vh{tag}", "type", "veth", "peer", "name", f"vw{tag}")
        for name, link, address in zip(names, (f"vh{tag}", f"vw{tag}"), ips, strict=True):
            _ip("link", "set", link, "netns", name)
            _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
            _ip("netns", "exec", name, "ip", "addr", "add", f"{address}/24", "dev", link)
            _ip("netns", "exec", name, "ip", "link", "set", link, "up")
        yield names[0], names[1], ips[0], ips[1]
    finally:
        for name in names:
            _end_processes(name)
            subprocess.run(["ip", "netns", "del", name], check=False)


def _ray_start(namespace: str, temp: str, *args: str, attempts: int = 3) -> None:
    """`ray start` inside the namespace; a worker may find the head's services still starting
    on a loaded machine, so it tries again (after ending what the attempt left in that
    namespace, which only this test's processes live in) before failing."""
    ray = str(Path(sys.executable).with_name("ray"))
    env = RAY_ENV
    exec_in = ["ip", "netns", "exec", namespace, ray]
    for attempt in range(attempts):
        done = subprocess.run(
            [*exec_in, "start", "--num-cpus=1", "--disable-usage-stats",
             "--object-store-memory=80000000", f"--temp-dir={temp}", *args],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        if done.returncode == 0:
            return
        if attempt == attempts - 1:
            pytest.fail(f"ray start failed in {namespace}: {(done.stdout + done.stderr)[-2000:]}")
        _end_processes(namespace)
        time.sleep(5)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.netns
@pytest.mark.timeout(600)
def test_ray_actors_on_two_nodes_give_the_in_process_output(
    two_namespaces: tuple[str, str, str, str], tmp_path: Path
) -> None:
    head_ns, worker_ns, head_ip, worker_ip = two_namespaces
    temp = tempfile.mkdtemp(prefix="trr", dir="/tmp")  # short: Ray's socket paths must fit
    try:
        _ray_start(head_ns, temp, "--head", f"--node-ip-address={head_ip}", "--port=6379",
                   "--include-dashboard=false")  # fmt: skip
        _ray_start(worker_ns, temp, f"--address={head_ip}:6379", f"--node-ip-address={worker_ip}")
        out = tmp_path / "report.json"
        driver = [sys.executable, str(HERE), f"{head_ip}:6379", str(out)]
        subprocess.run(
            ["ip", "netns", "exec", head_ns, *driver],
            check=True,
            timeout=300,
            env=RAY_ENV,
        )
        remote = json.loads(out.read_text())
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    local = placed_outputs(None)
    assert remote["output"] == local["output"]  # the same floats, bit for bit
    assert remote["max_abs_diff"] < 1e-6 and remote["max_abs_diff_after_expand"] < 1e-6
    assert remote["max_abs_diff_after_shrink"] < 1e-6
    assert remote["hosted"] == remote["planned"] and remote["shipped"] == remote["planned_moves"]
    actor_nodes = remote["actor_nodes"]
    assert len(set(actor_nodes[:2])) == 2  # the two placement nodes on the two Ray nodes
    masked, local_masked = remote["masked"], masked_outputs(None)
    for name in MASKINGS:
        assert masked[name]["output"] == local_masked[name]["output"]  # bit for bit
        assert masked[name]["max_abs_diff"] < 1e-6
        assert set(masked[name]["sent"]) <= set(masked[name]["kept"])  # masked: never sent
        assert masked[name]["variants"] == [list(v) for v in local_masked[name]["variants"]]
    assert masked["merged"]["variants"]  # merged weights shipped to the Ray actors
    for node, variants in enumerate(masked["hosted_variants"]):  # each on a holder of it
        assert {e for e, _ in variants} <= set(masked["holders"][node])
    assert masked["merged_after_expand"] < 1e-6
    # The product's path: the service with `ray_address` set serves as the model does.
    served, local_served = remote["service"], service_outputs(None, tmp_path / "local.db")
    assert served["nodes"] == [2] * len(served["actor_nodes"]) and local_served["nodes"] == []
    for capsule in ("c-all", "c-drop", "c-merge"):
        assert served[capsule] == local_served[capsule], capsule  # tokens and expert loads
    assert all(len(set(nodes)) == 2 for nodes in served["actor_nodes"])  # a group per node
    # A node added to the running service on Ray: an actor more per layer, only the planned
    # experts shipped, the same answers after.
    grown = served["grown"]
    assert grown["nodes"] == [3] * len(served["actor_nodes"]) == grown["actors"]
    assert grown["hosted"] == grown["planned"] and all(m > 0 for m in grown["moves"])
    for capsule in ("c-all", "c-drop", "c-merge"):
        assert served[f"{capsule} grown"] == local_served[capsule], capsule


if __name__ == "__main__":  # the driver, inside the head's namespace
    import ray

    torch.set_num_threads(1)
    ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False)
    driven = {
        **placed_outputs(sys.argv[1]),
        "masked": masked_outputs(sys.argv[1]),
        "service": service_outputs(sys.argv[1], Path(sys.argv[2]).with_suffix(".db")),
    }
    Path(sys.argv[2]).write_text(json.dumps(driven))
