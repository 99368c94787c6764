"""The accelerator catalog: GPUs for the cloud layers, NPUs for the edge.

Figures are the vendors' (dense throughput, memory, bandwidth, power) and live with their
sources in `assets/fleet/accelerators.yaml`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trifecta.core.errors import InvalidInput
from trifecta.fleet.assets import read_asset

AcceleratorKind = Literal["gpu", "npu"]


class Accelerator(BaseModel):
    """One accelerator device as the sizing roofline sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    memory_gb: float = Field(gt=0, description="device memory, GB (10^9 bytes)")
    memory_bandwidth_gbs: float = Field(gt=0, description="memory bandwidth, GB/s")
    bf16_tflops: float = Field(ge=0, description="dense BF16 tensor throughput; 0: no BF16 path")
    int8_tops: float = Field(gt=0, description="dense INT8 throughput")
    power_w: float = Field(gt=0)
    kind: AcceleratorKind
    source: str = Field(min_length=1, description="where the figures come from")

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return self.memory_bandwidth_gbs * 1e9

    def ops_per_s(self, bits_per_weight: float) -> float:
        """Dense matrix throughput for weights of this width: INT8 units for 8 bits or fewer
        (quantised and ternary weights), BF16 otherwise (0 when the device has no BF16 path)."""
        return (self.int8_tops if bits_per_weight <= 8 else self.bf16_tflops) * 1e12


@lru_cache(maxsize=1)
def _catalog() -> dict[str, Accelerator]:
    raw = read_asset("fleet/accelerators.yaml")["accelerators"]
    return {name: Accelerator(name=name, **fields) for name, fields in raw.items()}


ACCELERATORS: dict[str, Accelerator] = _catalog()
GPU_NAMES: tuple[str, ...] = tuple(n for n, a in ACCELERATORS.items() if a.kind == "gpu")
NPU_NAMES: tuple[str, ...] = tuple(n for n, a in ACCELERATORS.items() if a.kind == "npu")


def get_accelerator(name: str) -> Accelerator:
    """The catalog entry for `name`; unknown names are bad input naming the allowed ones."""
    try:
        return ACCELERATORS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown accelerator {name!r}", field="accelerator", allowed=ACCELERATORS
        ) from None
