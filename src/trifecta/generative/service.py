"""The generative layer as a service: completions for a capsule, with its expert mask and its
router biases, tuned online from load and from outcome feedback.

`GenerativeService.complete_batch` decodes the requests of one capsule in one batch
(requests of several capsules are grouped per capsule, since each capsule routes with its own
mask and biases). After each batch the capsule's routed traffic is recorded (what a learned
mask is learned from) and, with `online_load`, DeepSeek-V3's load rule moves its biases one
step. `feedback` applies the outcome rule with the expert usage a response reported.

Where the experts run is the layer's settings' (`settings.GenerativeSettings`): in the model
by default; on placed nodes (`ray_experts.PlacedMoE`, in this process or as Ray actors) when
`expert_nodes` or `ray_address` is set. Routing, masks, merged experts and the loads
recorded are the same either way (tested).

On placed nodes the placement follows the load (`settings.GenerativeSettings`). At start each
MoE layer is placed from the traffic recorded for every capsule (equal weights with none), or
follows a stored placement of the same shape. Every `rebalance_window_tokens` routed tokens a
layer's measured max/mean node load is checked; past `rebalance_threshold` the layer is
rebalanced (`expansion.resize`: the fewest moves that reach `rebalance_target`) on a thread of
its own while requests go on, then applied between batches, shipping only the experts each
node lacks (so no expert is ever without a replica), and stored as a new placement version,
which other processes follow. `rebalance` does the same on demand, with nodes added or
removed; `trifecta generative placement|expand --apply` stores a version the running services
follow within `placement_check_s`.

The node count follows the load when `node_capacity_tokens_s` is set: every `scale_window_s`
the routed tokens per node per second are measured; past `expand_above` of the capacity nodes
are added (`expansion.nodes_needed`), below `shrink_below` of it the nodes whose removal
orphans the fewest experts are removed, within `min_nodes`..`max_nodes` and never sooner than
`scale_cooldown_s` after the last change, each a min-move rebalance on the stored (decayed)
traffic, stored with its `NodeScaling`. A restarted service starts on the newest stored
placement's node count, so an expansion survives it.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import InvalidInput, NotFound
from trifecta.core.logging import get_logger
from trifecta.generative.assets import shipped_model_path
from trifecta.generative.decoding import DecodeConfig, Decoder
from trifecta.generative.expert_nodes import alive_ray_nodes
from trifecta.generative.model import DiffusionLM, Routing
from trifecta.generative.placement import Placement, imbalance, round_robin
from trifecta.generative.ray_experts import PlacedMoE, initial_placements, place_model
from trifecta.generative.rebalance import (
    check_node_change,
    fits,
    plan_rebalance,
    removable_nodes,
)
from trifecta.generative.selection import ExpertMask
from trifecta.generative.sequences import answer_of
from trifecta.generative.settings import GenerativeSettings
from trifecta.generative.store import (
    BiasVersion,
    GenerativeStore,
    LayerMove,
    NodeScaling,
    PlacementVersion,
)
from trifecta.generative.tuning import TuningConfig, feedback_update, load_update

log = get_logger("trifecta.generative.service")
# How much worse a layer's measured max/mean must get before the service again tries to
# rebalance a layer that its last rebalance could not move (slots, not placement, bound it).
STUCK_MARGIN = 0.05


class GenerativeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capsule_id: str = Field(min_length=1, max_length=64)
    prompt: str = Field(min_length=1, max_length=60)
    steps: int | None = Field(default=None, description="denoising steps (default: service's)")
    parallel: bool = Field(default=True, description="Fast-dLLM threshold unmasking")


class ComputeUsed(BaseModel):
    """What the batch this request was decoded in cost (shared by its requests)."""

    batch_requests: int
    forward_passes: int
    expert_calls: int  # expert FFN invocations (one per expert with tokens, per layer, per pass)
    expert_tokens: int  # token-expert evaluations: the MoE's FLOPs are 6*D*d_ff times this
    experts_touched: int  # distinct (layer, expert) weights read
    experts_total: int  # n_layers * n_experts


class GenerativeResponse(BaseModel):
    capsule_id: str
    prompt: str
    text: str  # the generated scratchpad, up to `<eos>`
    answer: str | None  # its final answer
    tokens: list[int]
    steps: int
    experts_active: int  # (layer, expert) pairs the capsule's mask allows
    expert_load: list[list[int]]  # this request's routed tokens per layer and expert
    bias_version: int
    compute: ComputeUsed


class GenerativeService:
    def __init__(
        self,
        model: DiffusionLM | None = None,
        store: GenerativeStore | None = None,
        *,
        decode: DecodeConfig | None = None,
        tuning: TuningConfig | None = None,
        online_load: bool = True,
        experts: GenerativeSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if model is None:
            from trifecta.generative.artifact import load_model

            model = load_model(shipped_model_path())
        experts = experts or GenerativeSettings()
        self.settings = experts
        self.store = store or GenerativeStore()
        nodes = experts.expert_nodes
        if nodes == 0 and experts.ray_address:
            nodes = alive_ray_nodes(experts.ray_address)
        scaled = nodes and experts.node_capacity_tokens_s is not None
        if scaled and not experts.min_nodes <= nodes <= experts.max_nodes:
            raise InvalidInput(
                f"{nodes} nodes is outside min_nodes..max_nodes "
                f"({experts.min_nodes}..{experts.max_nodes})",
                field="expert_nodes",
            )
        self.placed: list[PlacedMoE] = []  # one per MoE layer when the experts are placed
        self.placement_version = 0  # the stored placement version the nodes run
        if nodes:
            # The layers compute on the nodes from now on: a copy, so a caller's model (a
            # test's shared one, an evaluation's) keeps computing in place.
            model = copy.deepcopy(model)
            start = self._start_placement(model.config.n_layers, model.config.n_experts, nodes)
            self.placed = place_model(model, start.layers, ray_address=experts.ray_address)
            self.placement_version = start.version
        self.model = model
        self.decoder = Decoder(model)
        self.decode_config = decode or DecodeConfig()
        self.tuning = tuning or TuningConfig()
        self.online_load = online_load
        self._lock = threading.Lock()  # one decode at a time: torch runs on one thread here
        self._placing = threading.Lock()  # one placement change at a time (computed unlocked)
        self._rebalancer: threading.Thread | None = None
        # Layers the last rebalance could not move: max/mean it left them at.
        self._stuck: dict[int, float] = {}
        self._next_check = time.monotonic() + experts.placement_check_s
        # The load per node is measured over `scale_window_s` of this clock (tests drive it).
        self._clock = clock
        self._scale_since = clock()
        self._scale_tokens = 0
        self._last_scale = -float("inf")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.model.config.n_layers, self.model.config.n_experts)

    def routing_for(self, capsule_id: str) -> tuple[Routing, BiasVersion, ExpertMask | None]:
        bias = self.store.current_bias(capsule_id, self.shape)
        mask = self.store.mask(capsule_id)
        active = merge = None
        if mask is not None:
            c = self.model.config
            mask.validate_for(c.n_layers, c.n_experts, c.top_k)
            active, merge = mask.active(c.n_experts), mask.merge_tensor()
        return Routing(bias=bias.tensor(), active=active, merge=merge), bias, mask

    @property
    def placements(self) -> list[Placement]:
        """Each MoE layer's placement (empty: the experts run in the model)."""
        return [layer.placement for layer in self.placed]

    # -- placement ----------------------------------------------------------------------------
    def _start_placement(self, n_layers: int, n_experts: int, nodes: int) -> PlacementVersion:
        """A placement per layer from the stored traffic (summed over capsules; equal
        weights with none), stored as a new version. When a placement of this shape is
        stored (another process serves it, or `placement --apply` made it) it is the start:
        kept if the traffic finds it within `rebalance_target`, else rebalanced with the
        fewest moves (the processes serving it follow with those moves only). Its node count
        is the start's, not the settings' (an expansion survives a restart), when its nodes
        have the configured slots and the count is within `min_nodes`..`max_nodes`."""
        slots = self.settings.slots_per_node or -(-n_experts // nodes)
        stored = self.store.latest_placement()
        traffic = self._traffic()
        loads = None if traffic is None else traffic[0].numpy().astype(np.float64)
        count = None if stored is None else stored.nodes
        if (
            stored is not None
            and count is not None
            and self.settings.min_nodes <= count <= self.settings.max_nodes
            and fits(stored.layers, n_layers, n_experts, [slots] * count)
        ):
            if count != nodes:
                log.info("starting on the stored node count", nodes=count, configured=nodes)
            if loads is not None:
                new, report = plan_rebalance(stored.layers, loads, self.settings)
                if any(r.moves for r in report):
                    why = f"start: rebalanced on {traffic[1] if traffic else 0} requests' traffic"
                    return self.store.put_placement(new, report, why)
            log.info("expert placement followed", version=stored.version, nodes=nodes)
            return stored
        layers = initial_placements(
            n_layers, n_experts, nodes, slots_per_node=self.settings.slots_per_node, loads=loads
        )
        weights = loads if loads is not None else np.ones((n_layers, n_experts))
        report = [
            LayerMove(
                layer=i,
                loads_from="traffic" if loads is not None else "none",
                before=round_robin(n_experts, p.cluster).imbalance(weights[i]),
                after=p.imbalance(weights[i]),
                moves=p.replica_count(),  # every replica shipped to an empty node
            )
            for i, p in enumerate(layers)
        ]
        why = f"start: {traffic[1]} requests' traffic" if traffic else "start: no traffic"
        return self.store.put_placement(layers, report, why)

    def placement_status(self) -> list[LayerStatus]:
        """Each placed layer's nodes and the load measured in its current window."""
        out = []
        for i, layer in enumerate(self.placed):
            nodes, experts = layer.window()
            out.append(
                LayerStatus(
                    layer=i,
                    version=self.placement_version,
                    nodes=layer.placement.nodes,
                    window_tokens=int(experts.sum()),
                    window_node_tokens=nodes.tolist(),
                    window_max_mean=imbalance(nodes.astype(np.float64)),
                )
            )
        return out

    def rebalance(
        self,
        *,
        loads: NDArray[np.float64] | None = None,
        layers: Sequence[int] | None = None,
        add: int = 0,
        remove: Sequence[int] = (),
        reason: str = "rebalance",
        loads_from: str = "given",
        scaling: NodeScaling | None = None,
    ) -> PlacementVersion:
        """Rebalance the placed layers with the fewest moves that reach the settings'
        `rebalance_target` (`add` nodes added, `remove` removed, in every layer), apply it
        between batches and store it as a new version. `loads` (n_layers, E): per-expert
        load (default: the stored traffic of every capsule, equal weights when nodes change
        and none is recorded); `layers`: only these (the others keep their placement). The
        node count stays within `min_nodes`..`max_nodes`. Requests are served while it is
        computed. When nothing moves no version is stored: the report comes back under the
        running version's number."""
        if not self.placed:
            raise InvalidInput(
                "the service runs its experts in the model: set expert_nodes or ray_address",
                field="expert_nodes",
            )
        with self._placing:
            self._follow_locked()  # from the newest stored placement
            check_node_change(self.nodes, add, remove, self.settings)
            source = loads_from
            if loads is None:
                traffic = self._traffic()
                if traffic is None and not add and not remove:
                    raise NotFound("no traffic is recorded yet", field="loads")
                # Nodes change without traffic: every expert weighs the same.
                loads, source = (
                    (np.zeros(self.shape), "none")
                    if traffic is None
                    else (traffic[0].numpy().astype(np.float64), "traffic")
                )
            new, report = plan_rebalance(
                self.placements,
                loads,
                self.settings,
                add=add,
                remove=remove,
                layers=layers,
                loads_from=source,
            )
            if not add and not remove and not any(r.moves for r in report):
                for row in report:
                    self._stuck[row.layer] = row.before
                return PlacementVersion(
                    version=self.placement_version,
                    layers=self.placements,
                    removed=[],
                    report=report,
                    reason=f"{reason}: nothing to move",
                    stored=False,
                )
            with self._lock:  # between batches: no forward pass sees a half-moved layer
                for layer, placement, row in zip(self.placed, new, report, strict=True):
                    if placement is not layer.placement:
                        row.moves = layer.apply(placement, remove)
            self._stuck.clear()
            if scaling is not None:
                scaling.moves = sum(r.moves for r in report)
                scaling.scratch_moves = sum(r.scratch_moves or 0 for r in report)
            stored = self.store.put_placement(new, report, reason, list(remove), scaling)
            self.placement_version = stored.version
        return stored

    def _traffic(self) -> tuple[torch.Tensor, int] | None:
        return self.store.traffic_total(half_life_s=self.settings.traffic_half_life_s)

    @property
    def nodes(self) -> int:
        """Placement nodes each layer runs on (0: the experts run in the model)."""
        return self.placed[0].placement.cluster.nodes if self.placed else 0

    def scale(self, nodes: int, *, load: float, window_s: float) -> PlacementVersion:
        """Change every layer's node count to `nodes` with a min-move rebalance on the stored
        traffic: nodes added, or the ones whose removal orphans the fewest experts removed.
        `load`: the routed tokens per second measured over `window_s`, stored with the
        version beside the load per node before and after."""
        current = self.nodes
        if not self.placed:
            raise InvalidInput("the service runs its experts in the model", field="expert_nodes")
        if nodes < 1 or nodes == current:
            raise InvalidInput(f"must be >= 1 and not {current}, got {nodes}", field="nodes")
        capacity = self.settings.node_capacity_tokens_s or 0.0
        scaling = NodeScaling(
            why="expand" if nodes > current else "shrink",
            nodes_before=current,
            nodes_after=nodes,
            load_per_node_before=load / current,
            load_per_node_after=load / nodes,
            capacity=capacity,
            window_s=window_s,
        )
        bound = "expand_above" if nodes > current else "shrink_below"
        reason = (
            f"{scaling.why} {current}->{nodes} nodes: {load / current:.0f} routed tokens/s per "
            f"node, {bound} {getattr(self.settings, bound)} of {capacity:.0f}"
        )
        remove = [] if nodes > current else removable_nodes(self.placements, current - nodes)
        version = self.rebalance(
            add=max(0, nodes - current), remove=remove, reason=reason, scaling=scaling
        )
        log.info("expert nodes scaled", version=version.version, **scaling.model_dump())
        return version

    def count_load(self, tokens: int) -> bool:
        """Count a batch's routed tokens; once `scale_window_s` has passed, compare the load
        per node with the capacity and, past a threshold and out of the cool-down, change
        the node count on a thread of its own. True when it started one."""
        settings = self.settings
        capacity = settings.node_capacity_tokens_s
        if capacity is None:
            return False
        now = self._clock()
        self._scale_tokens += tokens
        elapsed = now - self._scale_since
        if elapsed < settings.scale_window_s:
            return False
        load = self._scale_tokens / elapsed
        self._scale_tokens, self._scale_since = 0, now
        busy = self._rebalancer is not None and self._rebalancer.is_alive()
        if busy or now - self._last_scale < settings.scale_cooldown_s:
            return False
        from trifecta.generative.expansion import nodes_needed

        current = self.nodes
        wanted = nodes_needed(
            load, current, settings.expand_above * capacity, settings.shrink_below * capacity
        )
        # Never fewer nodes than hold every expert once.
        cluster = self.placed[0].placement.cluster
        fewest = max(
            settings.min_nodes, -(-self.placed[0].placement.num_experts // max(cluster.slots))
        )
        wanted = min(max(wanted, fewest), settings.max_nodes)
        if wanted == current:
            return False
        self._last_scale = now  # the cool-down runs from the decision
        self._rebalancer = threading.Thread(
            target=self._scale_online,
            args=(wanted, load, elapsed),
            name="generative-scale",
            daemon=True,
        )
        self._rebalancer.start()
        return True

    def _scale_online(self, nodes: int, load: float, window_s: float) -> None:
        try:
            self.scale(nodes, load=load, window_s=window_s)
        except Exception:  # a failed change leaves the running placement serving
            log.exception("expert node scaling failed", nodes=nodes)

    def join_rebalance(self, timeout: float | None = None) -> None:
        """Wait for an online rebalance under way (tests, a clean shutdown)."""
        worker = self._rebalancer
        if worker is not None:
            worker.join(timeout)

    def _after_batch(self, tokens: int) -> None:
        """Follow a newer stored placement (every `placement_check_s`), then the node count
        against the measured load per node (`tokens`: this batch's routed tokens), then
        each layer's measured window: past `rebalance_threshold`, rebalance on a thread of
        its own from the window's per-expert load."""
        now = time.monotonic()
        if now >= self._next_check and self._placing.acquire(blocking=False):
            self._next_check = now + self.settings.placement_check_s
            try:
                self._follow_locked()
            finally:
                self._placing.release()
        if self.count_load(tokens):
            return
        threshold = self.settings.rebalance_threshold
        hot: dict[int, NDArray[np.float64]] = {}
        for i, layer in enumerate(self.placed):
            nodes, experts = layer.window()
            if experts.sum() < self.settings.rebalance_window_tokens:
                continue
            layer.reset_window()
            measured = imbalance(nodes.astype(np.float64))
            # A layer no rebalance could move is tried again only when its load got worse.
            stuck = self._stuck.get(i)
            if stuck is not None and measured <= stuck + STUCK_MARGIN:
                continue
            if threshold is not None and measured > threshold:
                hot[i] = experts.astype(np.float64)
        if not hot or (self._rebalancer is not None and self._rebalancer.is_alive()):
            return
        c = self.model.config
        loads = np.zeros((c.n_layers, c.n_experts))  # only the hot layers' rows are read
        for i, row in hot.items():
            loads[i] = row
        self._rebalancer = threading.Thread(
            target=self._rebalance_online,
            args=(loads, sorted(hot)),
            name="generative-rebalance",
            daemon=True,
        )
        self._rebalancer.start()

    def _rebalance_online(self, loads: NDArray[np.float64], layers: list[int]) -> None:
        try:
            self.rebalance(
                loads=loads,
                layers=layers,
                reason=f"online: layers {layers} past threshold",
                loads_from="measured",
            )
        except Exception:  # a failed rebalance leaves the running placement serving
            log.exception("online rebalance failed", layers=layers)

    def _follow_locked(self) -> None:
        """Apply the stored placement versions newer than the one running (under
        `_placing`)."""
        for version in self.store.placements_after(self.placement_version):
            c = self.model.config
            if not fits(version.layers, c.n_layers, c.n_experts, None):
                log.warning("stored placement does not fit the model", version=version.version)
            else:
                try:
                    with self._lock:
                        moved = [
                            layer.apply(placement, version.removed)
                            for layer, placement in zip(self.placed, version.layers, strict=True)
                        ]
                except InvalidInput as exc:  # nodes removed from another base: skip it
                    log.warning(
                        "stored placement not applied", version=version.version, error=str(exc)
                    )
                else:
                    log.info(
                        "expert placement followed",
                        version=version.version,
                        reason=version.reason,
                        moved=moved,
                        max_mean=[round(r.after, 4) for r in version.report],
                    )
            self.placement_version = version.version

    def prepare_capsule(self, capsule_id: str) -> int:
        """Build a capsule's masked routers (and merged, stacked weights) before its first
        request, and ship its merged experts to the placed nodes that hold them. Returns the
        merged experts shipped."""
        mask = self.store.mask(capsule_id)
        if mask is None:
            raise NotFound(f"capsule {capsule_id!r} has no expert mask", field="capsule")
        c = self.model.config
        mask.validate_for(c.n_layers, c.n_experts, c.top_k)
        with self._lock:
            self.model.prepare_mask(mask.active(c.n_experts), mask.merge_tensor())
            return sum(layer.prepare(mask) for layer in self.placed)

    def complete(self, request: GenerativeRequest) -> GenerativeResponse:
        return self.complete_batch([request])[0]

    def complete_batch(self, requests: Sequence[GenerativeRequest]) -> list[GenerativeResponse]:
        if not requests:
            raise InvalidInput("no requests", field="requests")
        groups: dict[tuple[str, int | None, bool], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.capsule_id, r.steps, r.parallel), []).append(i)
        out: list[GenerativeResponse | None] = [None] * len(requests)
        for (capsule_id, steps, parallel), indices in groups.items():
            batch = [requests[i] for i in indices]
            responses = self._decode(capsule_id, steps, parallel, batch)
            for i, response in zip(indices, responses, strict=True):
                out[i] = response
        return [r for r in out if r is not None]

    def _decode(
        self,
        capsule_id: str,
        steps: int | None,
        parallel: bool,
        batch: list[GenerativeRequest],
    ) -> list[GenerativeResponse]:
        config = self.decode_config.model_copy(
            update={
                "steps": steps if steps is not None else self.decode_config.steps,
                "threshold": self.decode_config.threshold if parallel else None,
            }
        )
        config = DecodeConfig.model_validate(config.model_dump())  # re-check steps, blocks
        routing, bias, mask = self.routing_for(capsule_id)
        L, E = self.shape
        routing.row_load = torch.zeros((len(batch), L, E), dtype=torch.long)
        with self._lock:
            results, stats = self.decoder.decode([r.prompt for r in batch], config, routing)
        load = routing.load if routing.load is not None else torch.zeros(L, E)
        self.store.add_traffic(
            capsule_id, load, len(batch), half_life_s=self.settings.traffic_half_life_s
        )
        if self.placed:
            self._after_batch(int(load.sum()))
        if self.online_load:
            updated = load_update(bias.tensor(), load, self.tuning, routing.active)
            if not torch.equal(updated, bias.tensor()):
                bias = self.store.put_bias(capsule_id, updated, f"load: {len(batch)} requests")
        compute = ComputeUsed(
            batch_requests=len(batch),
            forward_passes=stats.forward_passes,
            expert_calls=routing.calls,
            expert_tokens=routing.expert_tokens,
            experts_touched=len(routing.touched),
            experts_total=L * E,
        )
        active = mask.active_count() if mask is not None else L * E
        return [
            GenerativeResponse(
                capsule_id=capsule_id,
                prompt=request.prompt,
                text=result.text,
                answer=answer_of(result.text),
                tokens=result.tokens,
                steps=result.steps,
                experts_active=active,
                expert_load=routing.row_load[i].tolist(),
                bias_version=bias.version,
                compute=compute,
            )
            for i, (request, result) in enumerate(zip(batch, results, strict=True))
        ]

    def feedback(self, capsule_id: str, expert_load: list[list[int]], success: bool) -> BiasVersion:
        """Outcome feedback for one served request (its response's `expert_load`)."""
        load = torch.tensor(expert_load, dtype=torch.float32)
        if tuple(load.shape) != self.shape:
            raise InvalidInput(
                f"expected {self.shape[0]} x {self.shape[1]} counts, got {tuple(load.shape)}",
                field="expert_load",
            )
        current = self.store.current_bias(capsule_id, self.shape)
        updated = feedback_update(current.tensor(), load, success, self.tuning)
        verdict = "success" if success else "failure"
        return self.store.put_bias(capsule_id, updated, f"feedback: {verdict}")


class LayerStatus(BaseModel):
    """A placed layer now: its nodes and the load measured in its current window."""

    layer: int
    version: int  # the stored placement version the nodes run
    nodes: list[list[int]]
    window_tokens: int
    window_node_tokens: list[int]
    window_max_mean: float
