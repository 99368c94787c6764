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
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import InvalidInput, NotFound
from trifecta.generative.assets import shipped_model_path
from trifecta.generative.decoding import DecodeConfig, Decoder
from trifecta.generative.model import DiffusionLM, Routing
from trifecta.generative.placement import Placement
from trifecta.generative.ray_experts import PlacedMoE, alive_ray_nodes, place_model
from trifecta.generative.selection import ExpertMask
from trifecta.generative.sequences import answer_of
from trifecta.generative.settings import GenerativeSettings
from trifecta.generative.store import BiasVersion, GenerativeStore
from trifecta.generative.tuning import TuningConfig, feedback_update, load_update


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
    ):
        if model is None:
            from trifecta.generative.artifact import load_model

            model = load_model(shipped_model_path())
        experts = experts or GenerativeSettings()
        nodes = experts.expert_nodes
        if nodes == 0 and experts.ray_address:
            nodes = alive_ray_nodes(experts.ray_address)
        self.placed: list[PlacedMoE] = []  # one per MoE layer when the experts are placed
        if nodes:
            # The layers compute on the nodes from now on: a copy, so a caller's model (a
            # test's shared one, an evaluation's) keeps computing in place.
            model = copy.deepcopy(model)
            self.placed = place_model(
                model,
                nodes,
                slots_per_node=experts.slots_per_node,
                ray_address=experts.ray_address,
            )
        self.model = model
        self.decoder = Decoder(model)
        self.store = store or GenerativeStore()
        self.decode_config = decode or DecodeConfig()
        self.tuning = tuning or TuningConfig()
        self.online_load = online_load
        self._lock = threading.Lock()  # one decode at a time: torch runs on one thread here

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
        self.store.add_traffic(capsule_id, load, len(batch))
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
