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

The node count follows the load when `node_capacity_tokens_s` is set: every
`scale_window_s` the routed tokens per node per second (summed over the MoE layers) are
measured against that capacity; past `expand_above` of it nodes are added (as many as bring
the mean below it, `expansion.nodes_needed`), below `shrink_below` of it nodes are removed,
within `min_nodes`..`max_nodes`, never sooner than `scale_cooldown_s` after the last change.
The stored traffic a start places from decays with `traffic_half_life_s`.
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
    rebalance_vary_counts: int = Field(
        default=0,
        ge=0,
        description="hot experts whose replica count a rebalance's search may change by one "
        "in a second node-content program (`expansion.resize`'s vary_counts); 0: off. No "
        "gain measured at 5 or 20 CPU seconds per rebalance",
    )
    placement_check_s: float = Field(
        default=5.0,
        ge=0.0,
        description="how often (seconds) the service looks for a newer stored placement "
        "(another process's, or placement --apply's); 0: before every batch",
    )

    node_capacity_tokens_s: float | None = Field(
        default=None,
        gt=0.0,
        description="routed tokens (token-expert pairs, summed over the MoE layers) a placement "
        "node serves per second at full load; none: the node count changes only on demand",
    )
    expand_above: float = Field(
        default=0.8,
        gt=0.0,
        description="fraction of node_capacity_tokens_s: a window's mean load per node past it "
        "adds nodes",
    )
    shrink_below: float = Field(
        default=0.3,
        ge=0.0,
        description="fraction of node_capacity_tokens_s: a window's mean load per node below it "
        "removes nodes; at most half of expand_above, so an expansion never lands below it",
    )
    scale_window_s: float = Field(
        default=30.0,
        gt=0.0,
        description="seconds of serving the load per node is measured over before a decision",
    )
    scale_cooldown_s: float = Field(
        default=120.0,
        ge=0.0,
        description="seconds after a change of node count before the next one",
    )
    min_nodes: int = Field(default=1, ge=1, description="fewest placement nodes a shrink leaves")
    max_nodes: int = Field(default=16, ge=1, description="most placement nodes an expansion makes")
    traffic_half_life_s: float | None = Field(
        default=None,
        gt=0.0,
        description="half-life (seconds) of the stored traffic a start or --apply places from; "
        "none: every request since the first counts alike",
    )

    @field_validator("shrink_below")
    @classmethod
    def _hysteresis(cls, value: float, info: ValidationInfo) -> float:
        above = info.data.get("expand_above")
        # An expansion leaves more than half its trigger per node (ceil(T/t) nodes for a load
        # T > (k-1)t), so a shrink threshold at most half of it cannot undo it at once.
        if above is not None and value > above / 2:
            raise ValueError(
                f"must be at most half of expand_above ({above}), got {value}: an expansion "
                "could land below it and the nodes would flap"
            )
        return value

    @field_validator("max_nodes")
    @classmethod
    def _bounds(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_nodes")
        if low is not None and value < low:
            raise ValueError(f"must be at least min_nodes ({low}), got {value}")
        return value

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
