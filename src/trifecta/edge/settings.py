"""The edge layer's own settings: `[edge]` in trifecta.toml, `TRIFECTA_EDGE_*` variables."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from trifecta.core.settings import LayerSettings


class EdgeSettings(LayerSettings):
    toml_section: ClassVar[str | None] = "edge"
    model_config = SettingsConfigDict(env_prefix="TRIFECTA_EDGE_", extra="ignore")

    # 20 ms: bursts of 16 light requests on one node of capacity 4 keep 0.85 of each burst at
    # the edge against 0.34 refused at once (5 ms: 0.60; 50 ms: 0.82, no better, as the queue
    # bound caps it); through `trifecta run` under 1% of offloads find the node full, and the
    # wait showed no difference in its CPU a request or throughput beyond their intervals
    # (benchmarks/edge_admission.py, BENCHMARKS.md `mesh`).
    slot_wait_ms: float = Field(
        default=20.0,
        ge=0.0,
        le=1000.0,
        description="how long a light request waits for a slot on a node it may use when "
        "every such node is at capacity, before it goes to the cloud tier (0: refused at once)",
    )
    slot_queue: float = Field(
        default=2.0,
        ge=0.0,
        le=64.0,
        description="requests allowed to wait, per slot of the nodes they may use; one more "
        "is refused at once, so a saturated mesh still answers fast",
    )
