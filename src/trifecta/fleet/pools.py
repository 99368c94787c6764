"""The replica shapes a topology offers in a phase: what one replica of each layer's model
costs and serves, on each accelerator type of each environment.

Cognitive tiers and the generative model run on GPUs (every tensor-parallel degree that fits,
sized by the roofline of `fleet/sizing.py`), the edge model on NPUs, the context layer on CPU
replicas. A shape is dropped when smaller replicas of the same kind give as much capacity for
the same devices (k replicas of t devices versus one of k*t).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from trifecta.core.settings import Phase
from trifecta.fleet.accelerators import ACCELERATORS
from trifecta.fleet.assets import read_asset
from trifecta.fleet.costs import cpu_replica_hour_price
from trifecta.fleet.plan_model import Layer
from trifecta.fleet.sizing import PRESETS, max_batch, size_model, tp_degrees
from trifecta.fleet.topology import Environment, Topology

CONTEXT_SERVICE = "context-service"


@dataclass(frozen=True)
class PoolShape:
    """One way to run a replica: `capacity` tokens/s (context: requests/s) for `price` USD/h."""

    environment: str
    layer: Layer
    model: str
    accelerator: str | None
    tp: int
    batch: int
    capacity: float
    price: float

    @property
    def group(self) -> tuple[str, Layer, str]:
        """Shapes of one group are interchangeable: load may be spread over all of them."""
        return (self.environment, self.layer, self.model)


@lru_cache(maxsize=1)
def layer_models() -> tuple[str, str]:
    """(generative model, edge model) preset names."""
    raw = read_asset("fleet/models.yaml")
    return raw["generative_model"], raw["edge_model"]


def _gpu_shapes(
    env: Environment, topology: Topology, phase: Phase, layer: Layer, model: str, context: int
) -> list[PoolShape]:
    spec = PRESETS[model]
    shapes: list[PoolShape] = []
    for name in env.accelerators:
        acc = ACCELERATORS[name]
        if acc.kind != "gpu":
            continue
        devices = env.devices(name)
        price = topology.price(env, name, phase)
        kept: list[PoolShape] = []
        for tp in tp_degrees(acc):
            batch = min(topology.serving.batch_limit, max_batch(spec, acc, tp, context))
            if tp > devices or batch < 1:
                continue
            sizing = size_model(
                spec, acc, phase=phase, batch=batch, context=context, tp=tp, overrides={name: price}
            )
            shape = PoolShape(
                env.name, layer, model, name, tp, batch, sizing.decode_tokens_per_s, price * tp
            )
            if any(
                shape.tp % k.tp == 0 and k.capacity * (shape.tp // k.tp) >= shape.capacity
                for k in kept
            ):
                continue  # smaller replicas of this kind do at least as well
            kept.append(shape)
        shapes += kept
    return shapes


def _edge_shapes(env: Environment, topology: Topology, phase: Phase, model: str) -> list[PoolShape]:
    spec = PRESETS[model]
    context = topology.serving.edge_context
    shapes = []
    for name in env.accelerators:
        acc = ACCELERATORS[name]
        if acc.kind != "npu":
            continue
        batch = min(topology.serving.batch_limit, max_batch(spec, acc, 1, context))
        if batch < 1 or acc.ops_per_s(spec.bits_per_weight) == 0:
            continue
        price = topology.price(env, name, phase)
        sizing = size_model(
            spec, acc, phase=phase, batch=batch, context=context, tp=1, overrides={name: price}
        )
        shapes.append(
            PoolShape(env.name, "edge", model, name, 1, batch, sizing.decode_tokens_per_s, price)
        )
    return shapes


def pool_shapes(topology: Topology, phase: Phase) -> list[PoolShape]:
    """Every replica shape the planner may use in `phase`."""
    generative, edge = layer_models()
    serving = topology.serving
    shapes: list[PoolShape] = []
    for env in topology.serving_environments(phase):
        cognitive: list[PoolShape] = []
        for tier in topology.tier_quality:
            cognitive += _gpu_shapes(
                env, topology, phase, "cognitive", tier, serving.cognitive_context
            )
        shapes += cognitive
        shapes += _gpu_shapes(
            env, topology, phase, "generative", generative, serving.generative_context
        )
        shapes += _edge_shapes(env, topology, phase, edge)
        if cognitive:  # capsules can live here: their context shards do too
            shapes.append(
                PoolShape(
                    env.name,
                    "context",
                    CONTEXT_SERVICE,
                    None,
                    1,
                    1,
                    serving.context_rps_per_replica,
                    cpu_replica_hour_price(),
                )
            )
    return shapes
