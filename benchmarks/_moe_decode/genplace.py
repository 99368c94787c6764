"""`moe_decode.py --only genplace`: the generative service on placed nodes under skewed
traffic: experts placed from the stored traffic against equal weights (the service's
placement before), and an online rebalance after the traffic shifts against keeping the
placement, each arm decoding the same batches.

Skew comes from capsules' expert masks (each routes only to its own experts): three masked
capsules and one with every expert, drawn in a fixed mix. Phase 1's mix is recorded as the
stored traffic (`--traffic` requests, decoded in the model), then two placed services decode
the same `--batches` held-out batches of 16 requests: one placed from equal weights (no
traffic), one from the stored traffic. Phase 2 moves the hot capsule; the traffic-placed
service decodes the same phase-2 batches with and without online rebalancing. Per batch and
MoE layer the nodes' routed tokens are read (the layer's measured window) and max/mean taken;
a batch's figure is the mean over layers. Medians over batches with 95% bootstrap intervals;
paired ratios within a batch.

Nodes run in this process, one after another, so the decoder's own speed does not depend on
the balance: the tokens/s row is the in-process cost, and the expert-parallel speed-up is
modelled, as the step of an expert-parallel layer waits for its most loaded node: its
throughput scales with mean/max node load.

Phase 3: the load per node passes the nodes' capacity and the service adds a node on its
own. Arrivals are simulated: a clock the benchmark moves one second per batch (the service
reads it instead of the wall clock), and the capacity is set so three nodes at one batch a
second run at 100% of it (the median routed tokens of a phase-2 batch / 3), against
`expand_above` 0.8, a window of four batches: the first window expands, and the rest of
phase 3's batches are read on the nodes that result.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from benchmarks._report import RESULTS_DIR, bootstrap_median, cpu_name, machine_load, write_section

if TYPE_CHECKING:
    from trifecta.generative.model import DiffusionLM
    from trifecta.generative.service import GenerativeRequest, GenerativeService
    from trifecta.generative.store import GenerativeStore

NODES, SLOTS = 3, 3  # 9 slots for 8 experts: one redundant slot (the 10%)
BATCH = 16
# capsule -> its experts (None: every expert); phase mixes: capsule -> share of requests
MASKS: dict[str, list[int] | None] = {
    "left": [0, 1, 2, 3, 4],
    "right": [3, 4, 5, 6, 7],
    "even": [0, 2, 4, 6, 7],
    "wide": None,
}
PHASE_1 = {"left": 0.6, "even": 0.2, "wide": 0.2}
PHASE_2 = {"right": 0.6, "even": 0.2, "wide": 0.2}
THRESHOLD = 1.15  # the online arm's rebalance_threshold (the setting's default is 1.25)
EXPAND_ABOVE = 0.8  # phase 3's expand_above (the setting's default)
WINDOW_S = 4.0  # phase 3's scale_window_s: four batches, as a batch's routed tokens vary


def _store(folder: Path, name: str, layers: int) -> GenerativeStore:
    from trifecta.core.db import get_engine
    from trifecta.generative.selection import configured_mask
    from trifecta.generative.store import GenerativeStore

    store = GenerativeStore(get_engine(f"sqlite:///{folder / name}.db"))
    for capsule, experts in MASKS.items():
        if experts is not None:
            store.put_mask(capsule, configured_mask(experts, layers))
    return store


def _batches(
    mix: dict[str, float], count: int, seed: int, split: Literal["train", "heldout"]
) -> list[list[GenerativeRequest]]:
    from trifecta.core.tasks import generate_tasks
    from trifecta.generative.service import GenerativeRequest

    rng = np.random.default_rng(seed)
    tasks = generate_tasks(count * BATCH, seed=seed, split=split, difficulties=[3, 4, 5])
    names = list(mix)
    shares = np.array([mix[n] for n in names])
    capsules = rng.choice(len(names), size=len(tasks), p=shares / shares.sum())
    requests = [
        GenerativeRequest(capsule_id=names[c], prompt=t.prompt)
        for c, t in zip(capsules, tasks, strict=True)
    ]
    return [requests[i : i + BATCH] for i in range(0, len(requests), BATCH)]


def _placed(
    model: DiffusionLM, store: GenerativeStore, threshold: float | None
) -> GenerativeService:
    from trifecta.generative.service import GenerativeService
    from trifecta.generative.settings import GenerativeSettings

    settings = GenerativeSettings(
        expert_nodes=NODES,
        slots_per_node=SLOTS,
        rebalance_threshold=threshold,
        placement_check_s=3600,
    )
    return GenerativeService(model, store, online_load=False, experts=settings)


class _Clock:
    """Simulated arrivals: the benchmark sets the time a batch ends."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _expanding(
    model: DiffusionLM, store: GenerativeStore, capacity: float, clock: _Clock
) -> GenerativeService:
    from trifecta.generative.service import GenerativeService
    from trifecta.generative.settings import GenerativeSettings

    settings = GenerativeSettings(
        expert_nodes=NODES,
        slots_per_node=SLOTS,
        rebalance_threshold=None,  # the node count alone changes in phase 3
        placement_check_s=3600,
        node_capacity_tokens_s=capacity,
        expand_above=EXPAND_ABOVE,
        scale_window_s=WINDOW_S,
        scale_cooldown_s=3600,
    )
    return GenerativeService(model, store, online_load=False, experts=settings, clock=clock)


def _serve(service: GenerativeService, batch: list[GenerativeRequest]) -> tuple[float, float]:
    """Decode one batch; (mean over layers of its nodes' max/mean routed tokens, CPU s).
    Read off the nodes' running counts (the service's own window restarts at its checks;
    a rebalance keeps the counts of the nodes it keeps). The batch's routed tokens summed
    over layers, as the service counts them for its load per node, go to `_TOKENS`."""
    before = [layer.node_tokens.copy() for layer in service.placed]
    started = time.process_time()
    responses = service.complete_batch(batch)
    seconds = time.process_time() - started
    service.join_rebalance()  # an online rebalance the batch started lands before the next
    ratios = []
    for layer, counted in zip(service.placed, before, strict=True):
        # A node count change the batch started appends nodes (phase 3 only expands): the
        # batch ran on the first len(counted), whose counts the change kept.
        nodes = layer.node_tokens[: len(counted)] - counted
        ratios.append(float(nodes.max() / nodes.mean()))
    _TOKENS.append(sum(int(np.sum(r.expert_load)) for r in responses))
    return float(np.mean(ratios)), seconds


_TOKENS: list[int] = []  # routed tokens of each batch served, summed over layers


def _estimate(values: list[float]) -> str:
    if not values:
        return "-"
    med, low, high = bootstrap_median(values)
    return f"{med:.3f} [{low:.3f}, {high:.3f}]"


def run_genplace(model: DiffusionLM, args: argparse.Namespace) -> None:
    import torch

    from trifecta.generative.service import GenerativeService

    torch.set_num_threads(1)
    started, load_at_start = time.perf_counter(), machine_load()
    folder = Path(tempfile.mkdtemp(prefix="genplace"))
    layers = model.config.n_layers
    recorded = _store(folder, "recorded", layers)
    recorder = GenerativeService(model, recorded, online_load=False)
    for batch in _batches(PHASE_1, max(1, args.traffic // BATCH), seed=7, split="train"):
        recorder.complete_batch(batch)
    traffic = recorded.traffic_total()
    assert traffic is not None
    equal = _placed(model, _store(folder, "equal", layers), None)
    placed = _placed(model, recorded, None)
    # The online arm starts from the traffic arm's placement (stored: a service follows a
    # stored placement of its shape when no traffic says otherwise).
    start = recorded.latest_placement()
    assert start is not None
    online_store = _store(folder, "online", layers)
    online_store.put_placement(start.layers, start.report, "the traffic arm's placement")
    online = _placed(model, online_store, THRESHOLD)
    rows: dict[str, list[float]] = {k: [] for k in ("equal", "traffic", "cpu_e", "cpu_t")}
    for i, batch in enumerate(_batches(PHASE_1, args.batches, seed=11, split="heldout")):
        order = [(equal, "equal", "cpu_e"), (placed, "traffic", "cpu_t")]
        for service, key, cpu in order if i % 2 == 0 else order[::-1]:
            ratio, seconds = _serve(service, batch)
            rows[key].append(ratio)
            rows[cpu].append(seconds)
    # Phase 2: the hot capsule moves. The online arm starts from the same traffic placement.
    assert online.placements == placed.placements
    shifted: dict[str, list[float]] = {"static": [], "online": []}
    first: int | None = None  # the phase-2 batch after which the first rebalance landed
    for i, batch in enumerate(_batches(PHASE_2, args.batches, seed=13, split="heldout")):
        pair = [(placed, "static"), (online, "online")]
        for arm, name in pair if i % 2 == 0 else pair[::-1]:
            shifted[name].append(_serve(arm, batch)[0])
        if first is None and online.placement_version > 1:
            first = i + 1
    versions = online.store.placements_after(1)
    phase2_tokens = _TOKENS[-2 * args.batches :]
    # Phase 3: arrivals at one batch a second, on nodes sized so that this is 100% of the
    # capacity of three; the service starts from the online arm's newest placement.
    capacity = float(np.median(phase2_tokens)) / NODES
    grow_batches = max(8, args.batches * 2 // 3)
    clock = _Clock()
    grow = _expanding(model, online_store, capacity, clock)
    grown_from = grow.placement_version
    grown: list[float] = []
    first_grow = 0  # the phase-3 batch after which the nodes changed
    for batch in _batches(PHASE_2, grow_batches, seed=17, split="heldout"):
        clock.now += 1.0
        grown.append(_serve(grow, batch)[0])
        if first_grow == 0 and grow.nodes != NODES:
            first_grow = len(grown)
    scaled = [v for v in online_store.placements_after(grown_from) if v.scaling is not None]
    moved = [r for v in versions for r in v.report if r.moves]
    moves = sum(r.moves for r in moved)
    scratch = sum(r.scratch_moves or 0 for r in moved)
    speedup = [e / t for e, t in zip(rows["equal"], rows["traffic"], strict=True)]
    after = slice(first if first is not None else len(shifted["online"]), None)
    static_after, online_after = shifted["static"][after], shifted["online"][after]
    online_gain = [s / o for s, o in zip(static_after, online_after, strict=True)]
    cpu_ratio = [t / e for e, t in zip(rows["cpu_e"], rows["cpu_t"], strict=True)]
    seconds = time.perf_counter() - started
    if scaled:
        sc = scaled[0].scaling
        assert sc is not None
        expansion = (
            f"| {sc.nodes_before} -> {sc.nodes_after} nodes, after batch {first_grow} of "
            f"{grow_batches} | {sc.load_per_node_before / capacity:.0%} -> "
            f"{sc.load_per_node_after / capacity:.0%} | {sc.moves} (repack {sc.scratch_moves}) "
            f"| {_estimate(grown[first_grow:])} |"
        )
    else:
        expansion = f"| no expansion in {grow_batches} batches | | | {_estimate(grown)} |"
    each = "; ".join(
        f"v{v.version} "
        + ", ".join(
            f"layer {r.layer} {r.before:.3f} -> {r.after:.3f} in {r.moves} moves "
            f"(repack {r.scratch_moves})"
            for r in v.report
            if r.moves
        )
        for v in versions
    )
    lines = [
        "## Generative service: experts placed from measured traffic "
        "(`benchmarks/moe_decode.py --only genplace`)",
        "",
        f"Command: `python benchmarks/moe_decode.py --only genplace --batches {args.batches} "
        f"--traffic {args.traffic}`; {cpu_name()}; one torch thread; {load_at_start} at the "
        f"start, {machine_load()} at the end (others' jobs on the 2 cores); {seconds:.0f} s. "
        "The shipped model's MoE layers "
        f"on {NODES} placed nodes of {SLOTS} slots (8 experts, one redundant slot), in this "
        "process; skew from capsules' expert masks: phase 1 "
        f"{PHASE_1}, phase 2 {PHASE_2} (masks {MASKS}). Each batch's figure: the mean over "
        "the 3 layers of the nodes' max/mean routed tokens in that batch; medians over "
        f"{args.batches} held-out batches of {BATCH} (grades 3-5) with 95% bootstrap "
        "intervals; arms alternate within each batch.",
        "",
        "| placement | node max/mean, phase 1 | modelled expert-parallel speed vs equal weights |",
        "|---|---:|---:|",
        f"| equal weights (the service before) | {_estimate(rows['equal'])} | 1 |",
        f"| from the stored traffic ({traffic[1]} requests) | {_estimate(rows['traffic'])} "
        f"| {_estimate(speedup)}x |",
        "",
        "| phase 2 (the hot capsule moves) | node max/mean, every batch | after the first "
        "rebalance | kept / online, after it |",
        "|---|---:|---:|---:|",
        f"| traffic placement kept | {_estimate(shifted['static'])} | {_estimate(static_after)} "
        "| |",
        f"| online rebalance (threshold {THRESHOLD}) | {_estimate(shifted['online'])} "
        f"| {_estimate(online_after)} | {_estimate(online_gain)}x |",
        "",
        f"Online: {len(versions)} rebalance(s) in phase 2, the first after batch {first} of "
        f"{args.batches}; "
        f"{moves} expert moves in all against {scratch} for an EPLB-style from-scratch repack "
        "of the same layers at each rebalance (its node lists aligned to the nodes that "
        f"already hold them). Each (measured max/mean of the window that triggered it -> "
        f"after, on that window's load): {each}. The windows ({online.settings.rebalance_window_tokens:,} "
        "routed tokens, about three batches) carry the capsule draw's noise, so a layer is "
        "rebalanced again when a later window leans another way. In-process CPU per batch, "
        "traffic placement / equal weights: "
        f"{_estimate(cpu_ratio)}x (the same tokens decoded; the modelled speed-up is the "
        "expert-parallel bound, mean/max node load, not measured across machines).",
        "",
        "| phase 3 (load per node past the capacity) | load per node (of capacity), before "
        "-> after | experts moved (from-scratch repack) | node max/mean after, per batch |",
        "|---|---:|---:|---:|",
        expansion,
        "",
        f"Phase 3: {grow_batches} batches of the phase-2 mix, arrivals simulated at one "
        "batch a second (a clock the benchmark moves; the service reads it) over windows of "
        f"{WINDOW_S:g} s, node capacity "
        f"{capacity:,.0f} routed tokens/s (the median phase-2 batch's routed tokens over the "
        f"3 layers / {NODES}: three nodes at 100%), expand_above {EXPAND_ABOVE}; the service "
        "starts from the online arm's newest placement and decides on its own "
        "(`expansion.nodes_needed`, then the min-move resize on the stored traffic). The "
        "load per node after is the same load over the new nodes; the max/mean is measured "
        "on them over the batches after the expansion.",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    result = {
        "command": "benchmarks/moe_decode.py --only genplace",
        "cpu": cpu_name(),
        "load": machine_load(),
        "phase1": rows,
        "phase2": shifted,
        "moves": moves,
        "scratch_moves": scratch,
        "rebalances": [v.model_dump(mode="json") for v in versions],
        "phase3": {
            "capacity": capacity,
            "max_mean": grown,
            "scaling": [v.model_dump(mode="json") for v in scaled],
        },
    }
    if not args.no_write:
        write_section("genplace", markdown)
        RESULTS_DIR.mkdir(exist_ok=True)
        (RESULTS_DIR / "moe_genplace.json").write_text(json.dumps(result, indent=1) + "\n")
