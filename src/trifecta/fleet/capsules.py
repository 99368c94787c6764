"""Capsules: the tenants. What a capsule is, and the one rule of where it may run.

`Capsule.allows(place)` is the single sovereignty check that the planner, the orchestrator,
the mock bridge and the edge offload policy all call: a sovereign capsule runs only on
`sovereign` and `edge` environments inside its own jurisdiction, and every capsule only on
the environments (names or kinds) it lists.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trifecta.core.settings import Phase

SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"
BUILTIN_KINDS = ("digital_twin", "sovereign")
SOVEREIGN_ENVIRONMENT_KINDS = ("sovereign", "edge")
# Bounds that keep the fair queue's and the planner's arithmetic finite (a share of 1e308 or
# 5e-324 overflowed the slot guarantees); far outside any real fleet in both directions.
MIN_SHARE, MAX_SHARE = 1e-3, 1e3
MAX_RATE_RPS = 1e6


class Place(Protocol):
    """What the sovereignty rule reads of an environment (or of a node's environment)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def jurisdiction(self) -> str | None: ...


class Demand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_s: float = Field(ge=0, le=MAX_RATE_RPS, description="mean request rate")
    tokens_per_request: int = Field(
        default=256, gt=0, le=1_000_000, description="prompt + completion tokens"
    )
    light_share: float = Field(
        default=0.5, ge=0, le=1, description="share of requests light enough for the edge"
    )
    generative_share: float = Field(
        default=0.0, ge=0, le=1, description="share of requests for the generative (RND1) layer"
    )

    @model_validator(mode="after")
    def _shares_fit(self) -> Demand:
        # Light requests go to the edge or the cognitive layer, generative ones to RND1: the
        # two shares are disjoint parts of the same request stream.
        if self.light_share + self.generative_share > 1 + 1e-9:
            raise ValueError("generative_share: light_share + generative_share must be at most 1")
        return self

    @property
    def tokens_per_s(self) -> float:
        return self.requests_per_s * self.tokens_per_request


class Capsule(BaseModel):
    """A tenant: a digital twin, a sovereign deployment, or a user-defined kind."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=SLUG)
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(pattern=SLUG, description="digital_twin, sovereign, or a user-defined kind")
    domain: str = Field(pattern=SLUG, description="context shard key")
    jurisdiction: str | None = Field(
        default=None, pattern=SLUG, description="legal region; required for sovereign capsules"
    )
    allowed_environments: list[str] | None = Field(
        default=None,
        description="environment names or kinds; None: any (sovereign: sovereign, edge)",
    )
    phase: Phase = "dev"
    demand: Demand = Field(default_factory=lambda: Demand(requests_per_s=1.0))
    quality_target: float = Field(default=0.9, gt=0, le=1, description="target answer accuracy")
    share: float = Field(
        default=1.0, ge=MIN_SHARE, le=MAX_SHARE, description="weight in fair queuing"
    )
    quota_rps: float | None = Field(
        default=None, ge=1e-3, le=MAX_RATE_RPS, description="hard request-rate quota"
    )
    program: str | None = Field(
        default=None,
        pattern=SLUG,
        description="a shipped Tensor Logic program the capsule owns (its twin's rules), "
        "e.g. plant",
    )

    @field_validator("allowed_environments")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        return sorted(set(value)) if value is not None else None

    @model_validator(mode="after")
    def _sovereign_rules(self) -> Capsule:
        if self.kind == "sovereign":
            if not self.jurisdiction:
                raise ValueError("jurisdiction: a sovereign capsule must name its jurisdiction")
            if self.allowed_environments is None:
                self.allowed_environments = sorted(SOVEREIGN_ENVIRONMENT_KINDS)
        return self

    @property
    def sovereign(self) -> bool:
        return self.kind == "sovereign"

    @property
    def tenancy(self) -> tuple[bool, str | None]:
        """Capsules may share a context domain only when this is equal: a sovereign capsule's
        playbook and memories are never read by a capsule of another jurisdiction or by a
        non-sovereign one."""
        return (self.sovereign, self.jurisdiction if self.sovereign else None)

    def allows(self, place: Place) -> bool:
        """May this capsule's requests, context or memories reach `place`?"""
        if self.allowed_environments is not None and not (
            place.name in self.allowed_environments or place.kind in self.allowed_environments
        ):
            return False
        if self.sovereign:
            return (
                place.kind in SOVEREIGN_ENVIRONMENT_KINDS
                and place.jurisdiction == self.jurisdiction
            )
        return True
