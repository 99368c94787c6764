"""The generative layer's settings: `[generative]` in trifecta.toml, `TRIFECTA_GENERATIVE_*`.

Where the MoE layers' experts run. By default in the model itself, in this process. With
`expert_nodes` each MoE layer's experts are placed on that many nodes (`ray_experts`), run
in this process; with `ray_address` those nodes are Ray actors on that cluster, one group
per Ray node (as many placement nodes as the cluster has alive nodes unless `expert_nodes`
says otherwise). The shared `ray_address` setting is the cognitive tiers'; this one is the
generative layer's own, so serving the tiers on Ray does not move the experts there.

On placed nodes the placement follows the load. At start each layer is placed from the
traffic recorded for every capsule (equal weights when there is none), unless a placement of
the same shape is stored (another process's, or `placement --apply`'s), which is followed.
Online, every `rebalance_window_tokens` routed tokens of a layer, when that window's max/mean
node load passed `rebalance_threshold`, the layer is rebalanced toward `rebalance_target`
moving as few experts as reach it, and the new placement is stored; every
`placement_check_s` the service follows a newer stored one.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from trifecta.core.settings import LayerSettings


class GenerativeSettings(LayerSettings):
    toml_section: ClassVar[str | None] = "generative"
    model_config = SettingsConfigDict(env_prefix="TRIFECTA_GENERATIVE_", extra="ignore")

    expert_nodes: int = Field(
        default=0,
        ge=0,
        description="placement nodes each MoE layer's experts run on; 0: in the model, or one "
        "per alive node of the Ray cluster when ray_address is set",
    )
    slots_per_node: int | None = Field(
        default=None,
        ge=1,
        description="experts a placement node holds; default: the fewest that hold every "
        "expert once",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster whose nodes run the placed experts as actors; none: the "
        "placed nodes run in this process",
    )
    rebalance_threshold: float | None = Field(
        default=1.25,
        gt=1.0,
        description="max/mean node load of a layer, measured over a window, past which the "
        "service rebalances that layer's experts online; none: never online",
    )
    rebalance_target: float = Field(
        default=1.05,
        ge=1.0,
        description="max/mean node load a rebalance moves experts to reach (fewest moves); "
        "below rebalance_threshold",
    )
    rebalance_window_tokens: int = Field(
        default=20_000,
        ge=1,
        description="routed tokens of a layer (token-expert pairs) measured before its max/mean "
        "is checked; the window then starts again",
    )
    rebalance_time_limit_s: float = Field(
        default=1.0,
        gt=0.0,
        description="CPU seconds a rebalance's exact solver or search may spend per layer",
    )
    placement_check_s: float = Field(
        default=5.0,
        ge=0.0,
        description="how often (seconds) the service looks for a newer stored placement "
        "(another process's, or placement --apply's); 0: before every batch",
    )

    @field_validator("rebalance_target")
    @classmethod
    def _target_below_threshold(cls, value: float, info: ValidationInfo) -> float:
        threshold = info.data.get("rebalance_threshold")
        if threshold is not None and value >= threshold:
            raise ValueError(
                f"must be below rebalance_threshold ({threshold}), got {value}: a rebalance "
                "would stop where the next one starts"
            )
        return value
