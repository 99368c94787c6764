"""What a request cost: tier, tokens and accelerator-seconds, priced for the cost ledger.

A tier stands for a real checkpoint (its `preset` in `fleet.sizing.PRESETS`) served on the GPU
tier the playbook maps it to (A10 -> A100 -> H100). The foundation's sizing gives, for a
replica batching `batch` sequences of `context` tokens there, the accelerator-seconds each
decoded token takes (memory-bandwidth roofline). A prompt token costs the compute-bound
prefill figure, `2 * active parameters / dense ops/s` device-seconds, and a prompt token found
in the replica's prefix cache costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from trifecta.core.errors import InvalidInput
from trifecta.core.settings import Phase
from trifecta.fleet.accelerators import get_accelerator
from trifecta.fleet.sizing import get_preset, serving_shape

# The context a replica is provisioned for when pricing (a typical serving window; the
# presets' native windows of up to 131,072 tokens would price every token as if it were
# the longest possible request).
PRICING_CONTEXT = 4096


class RequestCost(BaseModel):
    """The cost record attached to every response (`usage.cost`) and its headers."""

    tier: str
    preset: str = Field(description="the real checkpoint the tier stands for")
    accelerator: str
    tp_degree: int
    prompt_tokens: int
    cached_prompt_tokens: int = 0
    completion_tokens: int
    accelerator_seconds: float
    usd: float

    def merge(self, other: RequestCost) -> RequestCost:
        """The cost of both (an escalated `auto` request pays every tier it went through; a
        call with several choices pays each): tokens and seconds add up, tiers are listed."""
        return RequestCost(
            tier=_joined(self.tier, other.tier),
            preset=_joined(self.preset, other.preset),
            accelerator=_joined(self.accelerator, other.accelerator),
            tp_degree=max(self.tp_degree, other.tp_degree),
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            accelerator_seconds=self.accelerator_seconds + other.accelerator_seconds,
            usd=self.usd + other.usd,
        )


def _joined(first: str, second: str) -> str:
    names = first.split("+")
    names += [name for name in second.split("+") if name not in names]
    return "+".join(names)


@dataclass(frozen=True)
class TierRate:
    """Per-token accelerator time and price of one tier."""

    tier: str
    preset: str
    accelerator: str
    tp_degree: int
    decode_seconds_per_token: float
    prefill_seconds_per_token: float
    usd_per_accelerator_second: float

    def cost(
        self, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0
    ) -> RequestCost:
        seconds = (
            prompt_tokens - cached_prompt_tokens
        ) * self.prefill_seconds_per_token + completion_tokens * self.decode_seconds_per_token
        return RequestCost(
            tier=self.tier,
            preset=self.preset,
            accelerator=self.accelerator,
            tp_degree=self.tp_degree,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=cached_prompt_tokens,
            completion_tokens=completion_tokens,
            accelerator_seconds=seconds,
            usd=seconds * self.usd_per_accelerator_second,
        )


def tier_rate(tier: str, *, preset: str, accelerator: str, phase: Phase, batch: int) -> TierRate:
    """Price `tier`, standing for `preset` on `accelerator`, batching up to `batch` sequences."""
    spec = get_preset(preset)
    device = get_accelerator(accelerator)
    shape = serving_shape(spec, device, phase=phase, context=PRICING_CONTEXT, batch_limit=batch)
    if shape is None:
        raise InvalidInput(f"{preset} does not fit on {device.name}", field="accelerator")
    prefill = 2 * spec.active / device.ops_per_s(spec.bits_per_weight)
    return TierRate(
        tier=tier,
        preset=preset,
        accelerator=device.name,
        tp_degree=shape.tp_degree,
        decode_seconds_per_token=shape.accelerator_seconds_per_token,
        prefill_seconds_per_token=prefill,
        usd_per_accelerator_second=shape.hour_price / 3600,
    )


def shipped_tier_rate(tier: str, *, phase: Phase, batch: int) -> TierRate:
    """The rate of a shipped tier, from the checkpoint and GPU tier it stands for (the mapping
    the cascade's costs use too, `cognitive.cost.TIER_ACCELERATORS`)."""
    from trifecta.cognitive.cost import TIER_ACCELERATORS
    from trifecta.cognitive.tiers import get_tier

    return tier_rate(
        tier,
        preset=get_tier(tier).preset,
        accelerator=TIER_ACCELERATORS[tier],
        phase=phase,
        batch=batch,
    )
