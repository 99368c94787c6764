"""The generative layer's settings: `[generative]` in trifecta.toml, `TRIFECTA_GENERATIVE_*`.

Where the MoE layers' experts run. By default in the model itself, in this process. With
`expert_nodes` each MoE layer's experts are placed on that many nodes (`ray_experts`), run
in this process; with `ray_address` those nodes are Ray actors on that cluster, one group
per Ray node (as many placement nodes as the cluster has alive nodes unless `expert_nodes`
says otherwise). The shared `ray_address` setting is the cognitive tiers'; this one is the
generative layer's own, so serving the tiers on Ray does not move the experts there.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
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
