"""Accelerator profiles of the edge targets (Coral NPU, RISC-V NPU) for the edge model.

A profile is the roofline of one decode step of the edge model on a target: the ternary
weights are streamed once per token at the layout's bits per weight, each weight costs two
integer operations (multiply-add), and the token rate is the lower of the memory-bound and
compute-bound rates. Device figures (INT8 throughput, memory bandwidth, power) come from the
fleet catalog (`fleet.accelerators.ACCELERATORS`) and prices from the cost tables
(`fleet.costs.gpu_hour_price`), so the planner and the offload policy read one set of numbers.
`utilisation` is the share of the peak a real kernel reaches; the default 0.5 is an assumption
(no Coral board was measured here), stated in every profile.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.settings import Phase
from trifecta.edge.config import EdgeModelConfig
from trifecta.edge.packing import Layout, bits_per_weight
from trifecta.fleet.accelerators import ACCELERATORS, get_accelerator
from trifecta.fleet.costs import gpu_hour_price

EDGE_TARGETS: tuple[str, ...] = tuple(
    name for name, acc in ACCELERATORS.items() if acc.kind == "npu"
)
DEFAULT_UTILISATION = 0.5


class AcceleratorProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    accelerator: str
    phase: Phase
    layout: Layout
    weight_bytes_per_token: float = Field(description="ternary weights streamed per decoded token")
    ops_per_token: float
    tokens_per_s: float = Field(description="roofline rate times utilisation")
    bound: str = Field(description="memory or compute")
    power_w: float
    joules_per_token: float
    price_per_hour: float = Field(description="USD per device-hour in this phase")
    usd_per_million_tokens: float
    utilisation: float
    source: str


def edge_profile(
    accelerator: str,
    config: EdgeModelConfig,
    *,
    phase: Phase = "dev",
    layout: Layout = "i2",
    utilisation: float = DEFAULT_UTILISATION,
) -> AcceleratorProfile:
    device = get_accelerator(accelerator)
    weights = config.ternary_parameters()
    # Float parameters read per token: the embedding row, position row, the tied head, norms.
    float_bytes = 4 * (
        config.vocab_size * config.d_model + 2 * config.d_model * (2 * config.n_layers + 2)
    )
    bytes_per_token = weights * bits_per_weight(layout) / 8 + float_bytes
    ops = 2.0 * (weights + config.vocab_size * config.d_model)
    memory_rate = device.bandwidth_bytes_per_s / bytes_per_token
    compute_rate = device.ops_per_s(bits_per_weight(layout)) / ops
    rate = min(memory_rate, compute_rate) * utilisation
    price = gpu_hour_price(accelerator, phase)
    return AcceleratorProfile(
        accelerator=accelerator,
        phase=phase,
        layout=layout,
        weight_bytes_per_token=bytes_per_token,
        ops_per_token=ops,
        tokens_per_s=rate,
        bound="memory" if memory_rate < compute_rate else "compute",
        power_w=device.power_w,
        joules_per_token=device.power_w / rate,
        price_per_hour=price,
        usd_per_million_tokens=price / (rate * 3600) * 1e6,
        utilisation=utilisation,
        source=device.source,
    )


def edge_profiles(
    config: EdgeModelConfig, *, phase: Phase = "dev", layout: Layout = "i2"
) -> list[AcceleratorProfile]:
    return [edge_profile(name, config, phase=phase, layout=layout) for name in EDGE_TARGETS]
