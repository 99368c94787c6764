"""What a tier costs per token, from the foundation's sizing of the checkpoint it stands for.

Two measures, both per token processed (prompt and completion alike):

- compute: 2 x active parameters floating-point operations (a forward pass's multiply-adds),
  the measure the issue's goal is stated in ("40% of the largest tier's compute cost");
- dollars: `fleet.sizing.size_model` of the preset on the tier's accelerator (the playbook's
  GPU tier mapping A10 -> A100 -> H100) at batch 1, i.e. its cost per million decode tokens.

The tiny tiers themselves cost next to nothing; what the cascade saves is measured in the
currency of the checkpoints they stand for.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from trifecta.cognitive.tiers import TIER_NAMES, get_tier

# The accelerator each tier is served on (fleet.accelerators names): A10 -> A100 -> H100.
TIER_ACCELERATORS: dict[str, str] = {"small": "a10", "medium": "a100-80gb", "large": "h100"}
SIZING_CONTEXT = 4096  # tokens of KV cache reserved per sequence when sizing


@dataclass(frozen=True)
class TierCost:
    tier: str
    preset: str
    accelerator: str
    flops_per_token: float
    usd_per_token: float

    def flops(self, tokens: int) -> float:
        return self.flops_per_token * tokens

    def usd(self, tokens: int) -> float:
        return self.usd_per_token * tokens


@cache
def tier_cost(name: str) -> TierCost:
    """The cost of tier `name` per token, sized from its preset."""
    from trifecta.fleet.sizing import get_preset, size_model

    spec = get_tier(name)
    preset = get_preset(spec.preset)
    accelerator = TIER_ACCELERATORS[name]
    sizing = size_model(preset, accelerator, batch=1, context=SIZING_CONTEXT)
    return TierCost(
        tier=name,
        preset=spec.preset,
        accelerator=accelerator,
        flops_per_token=2.0 * preset.active,
        usd_per_token=sizing.cost_per_million_tokens / 1e6,
    )


def all_tier_costs() -> dict[str, TierCost]:
    return {name: tier_cost(name) for name in TIER_NAMES}
