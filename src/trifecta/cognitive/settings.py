"""The cognitive layer's settings: `[cognitive]` in trifecta.toml, `TRIFECTA_COGNITIVE_*`."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from trifecta.cognitive.entropy import DEFAULT_AGGREGATE, DEFAULT_WINDOW, Aggregate
from trifecta.cognitive.scratchpad import ANSWER_TOKENS
from trifecta.core.settings import LayerSettings


class CognitiveSettings(LayerSettings):
    toml_section: ClassVar[str | None] = "cognitive"
    model_config = SettingsConfigDict(env_prefix="TRIFECTA_COGNITIVE_", extra="ignore")

    aggregate: Aggregate = Field(default=DEFAULT_AGGREGATE, description="escalation signal")
    window: int = Field(default=DEFAULT_WINDOW, ge=1, description="steps of the mean/max window")
    escalation_rate: float = Field(
        default=0.35,
        gt=0,
        le=1,
        description="default share of a tier's requests handed to the next tier",
    )
    # 1,000: the `keep` target's bootstrap lower bound narrows with the sample, so a larger one
    # buys the same kept accuracy for less compute (with the grade-5-refined large tier, 400
    # tasks fitted a configuration at 41% of its compute on the sample, 1,000 tasks one at 29%).
    calibration_sample: int = Field(default=1000, ge=20, description="tasks per calibration")
    recalibrate_every: int = Field(
        default=200, ge=10, description="requests between online recalibrations of a capsule"
    )
    recalibration_window: int = Field(
        default=2000, ge=50, description="recent signals kept per capsule and tier"
    )
    reuse_prefix: bool = Field(
        default=False, description="hand the accepted prefix of the smaller tier to the next one"
    )
    max_new_tokens: int = Field(
        default=ANSWER_TOKENS, ge=1, description="default completion length (a worked answer)"
    )
    prefix_cache_tokens: int = Field(
        default=16_384,
        ge=0,
        description="prompt-prefix keys/values each serving engine keeps, in tokens (least "
        "recently used dropped first; the last prefix is always kept)",
    )
    router_prefix_hashes: int | None = Field(
        # The index predicts which replica's prefix cache holds a prompt's blocks; a hash no
        # replica can still hold only misleads the router and costs ~330 bytes (measured).
        # It was a fixed 100,000 (33 MB a tier) against 2,048 blocks per engine's cache; on
        # 20,000 task prompts the fitted bound found 0.12% cached prefixes and no stale match,
        # 100,000 0.13% and 0.42% stale (benchmarks/soak.py --hit-rates, docs/serving.md).
        default=None,
        ge=1,
        description="prompt-block hashes a tier's router remembers (least recently routed "
        "dropped first); none: as many as its replicas' prefix caches hold "
        "(prefix_cache_tokens / 8 each)",
    )


def get_cognitive_settings() -> CognitiveSettings:
    """Read afresh each call (cheap), so tests and reloads see the current environment."""
    return CognitiveSettings()
