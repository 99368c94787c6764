"""Fleet files: capsules in YAML or JSON, the shipped default fleet, and synthetic fleets.

A fleet file is either a list of capsules or a mapping with a `capsules:` list (and optionally
`name:` and `description:`). Errors name the capsule's position and field
(`fleet.capsules[3].demand.requests_per_s: ...`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trifecta.core.errors import InvalidInput
from trifecta.core.settings import PHASES, Phase
from trifecta.fleet.assets import asset_path, invalid_from, read_document, write_document
from trifecta.fleet.capsules import Capsule, Demand

DEFAULT_FLEET = "fleet/default.yaml"


class FleetFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str | None = None
    capsules: list[Capsule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> FleetFile:
        seen: set[str] = set()
        for capsule in self.capsules:
            if capsule.id in seen:
                raise ValueError(f"id: capsule id {capsule.id!r} appears twice")
            seen.add(capsule.id)
        return self


def parse_fleet(data: Any, *, source: str = "fleet") -> list[Capsule]:
    """Capsules from parsed YAML/JSON (a list, or a mapping with `capsules:`)."""
    if data is None:
        return []
    if isinstance(data, list):
        data = {"capsules": data}
    if not isinstance(data, dict):
        raise InvalidInput("expected a list of capsules or a mapping with 'capsules'", field=source)
    try:
        return FleetFile.model_validate(data).capsules
    except ValidationError as exc:
        raise invalid_from(exc, prefix=source) from None


def load_fleet(path: Path | None = None) -> list[Capsule]:
    """The capsules of a fleet file, or of the shipped default fleet when `path` is None."""
    target = asset_path(DEFAULT_FLEET) if path is None else Path(path)
    return parse_fleet(read_document(target, field="fleet"))


def fleet_document(capsules: Sequence[Capsule], *, name: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name} if name else {}
    body["capsules"] = [c.model_dump(mode="json", exclude_none=True) for c in capsules]
    return body


def fleet_yaml(capsules: Sequence[Capsule], *, name: str | None = None) -> str:
    return yaml.safe_dump(fleet_document(capsules, name=name), sort_keys=False)


def dump_fleet(capsules: Sequence[Capsule], path: Path, *, name: str | None = None) -> None:
    """Write capsules to `path` (JSON for `.json`, YAML otherwise); `load_fleet` reads it back."""
    write_document(fleet_document(capsules, name=name), Path(path))


# ------------------------------------------------------------------ synthetic fleets
#
# Capsules are drawn from a small catalogue of service profiles, the way tenants buy plans:
# a size (request rate and request length), a use case (how much the edge may serve, how much
# goes to the generative layer) and a quality target. Identical profiles make identical
# capsules, which the planner aggregates; the mix itself is this module's assumption.

_KINDS = (("digital_twin", 0.75), ("sovereign", 0.20), ("research", 0.05))
_DOMAINS = {
    "digital_twin": (
        "manufacturing",
        "energy",
        "logistics",
        "healthcare",
        "agriculture",
        "telecom",
        "water",
        "retail",
    ),
    "sovereign": ("defense", "public_sector", "healthcare", "energy"),
    "research": ("science", "climate"),
}
# Requests/s of a medium capsule in each phase: a pilot sees more traffic than a dev tenant.
_BASE_RPS = {"dev": 0.05, "pilot": 0.25, "full": 1.0}
_SIZES = (("small", 0.5, 256, 0.5), ("medium", 1.0, 512, 0.35), ("large", 2.0, 1024, 0.15))
_USE_CASES = (
    ("monitoring", 0.7, 0.0, 0.45),
    ("assistant", 0.4, 0.1, 0.40),
    ("design", 0.2, 0.4, 0.15),
)
# The playbook's dev phase runs 8-13B checkpoints: dev targets stop at the 13B tier's quality.
_QUALITY = {
    "dev": ((0.85, 0.7), (0.9, 0.3)),
    "pilot": ((0.85, 0.45), (0.9, 0.4), (0.95, 0.15)),
    "full": ((0.85, 0.45), (0.9, 0.4), (0.95, 0.15)),
}


# Continuous demand (`demand="continuous"`): real tenants do not buy three sizes. Each
# capsule's rate and request length are drawn log-normally around its profile's (spread
# sigma), its shares normally around its use case's; no two capsules then share a demand, so
# the planner cannot aggregate them into a few classes.
DemandMix = Literal["catalogue", "continuous"]
DEMAND_MIXES: tuple[DemandMix, ...] = ("catalogue", "continuous")
_RATE_SIGMA = 0.8  # a factor of e^0.8 = 2.2 either side of the profile's rate, one sigma
_LENGTH_SIGMA = 0.5
_SHARE_SD = 0.1


def _pick(rng: random.Random, options: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    return rng.choices(options, weights=[o[-1] for o in options])[0]


def _continuous(
    rng: random.Random, rps: float, tokens: int, light: float, generative: float
) -> tuple[float, int, float, float]:
    rps = round(rps * math.exp(rng.gauss(0.0, _RATE_SIGMA)), 6)
    tokens = min(8192, max(32, round(tokens * math.exp(rng.gauss(0.0, _LENGTH_SIGMA)))))
    light = round(min(1.0, max(0.0, rng.gauss(light, _SHARE_SD))), 4)
    if generative > 0:
        generative = round(min(1.0 - light, max(0.0, rng.gauss(generative, _SHARE_SD))), 4)
    return max(rps, 1e-6), tokens, light, generative


def generate_fleet(
    n: int,
    *,
    seed: int,
    phase: Phase = "dev",
    jurisdictions: Sequence[str] = ("eu", "us"),
    demand: DemandMix = "catalogue",
) -> list[Capsule]:
    """`n` synthetic capsules: digital twins (most), sovereign capsules bound to one of
    `jurisdictions`, and a few of a user-defined kind, across domains and demand profiles
    (`catalogue`: a few plans, many identical capsules; `continuous`: every capsule's demand
    drawn from distributions around its plan). The same seed gives the same fleet."""
    if n < 0:
        raise InvalidInput("must not be negative", field="capsules")
    if phase not in PHASES:
        raise InvalidInput(f"unknown phase {phase!r}", field="phase", allowed=PHASES)
    if not jurisdictions:
        raise InvalidInput("give at least one jurisdiction", field="jurisdictions")
    if demand not in DEMAND_MIXES:
        raise InvalidInput(f"unknown demand mix {demand!r}", field="demand", allowed=DEMAND_MIXES)
    rng = random.Random(seed)
    # its own stream, so a continuous fleet has the same tenants as the catalogue one
    demand_rng = random.Random(f"{seed}:demand")
    width = max(4, len(str(n)))
    capsules = []
    for i in range(n):
        kind = _pick(rng, _KINDS)[0]
        domain = rng.choice(_DOMAINS[kind])
        size, rps_factor, tokens, _ = _pick(rng, _SIZES)
        use_case, light, generative, _ = _pick(rng, _USE_CASES)
        if phase == "dev":
            # RND1 at 16 bits needs a whole A100 80 GB ($2.62/hour), half the dev target:
            # dev tenants exercise the generative layer in process, not on planned GPUs.
            generative = 0.0
        quality = _pick(rng, _QUALITY[phase])[0]
        rps = _BASE_RPS[phase] * rps_factor
        if demand == "continuous":
            rps, tokens, light, generative = _continuous(demand_rng, rps, tokens, light, generative)
        jurisdiction = rng.choice(list(jurisdictions)) if kind == "sovereign" else None
        allowed = None
        if kind == "digital_twin" and rng.random() < 0.15:
            allowed = ["inference", "edge"]  # a tenant that keeps off developer machines
        prefix = {"digital_twin": "dt", "sovereign": f"sov-{jurisdiction}"}.get(kind, kind)
        if kind == "sovereign":
            # A domain is a context tenancy boundary: sovereign capsules keep their own,
            # scoped to their jurisdiction (see `CapsuleRegistry` and docs/fleet.md).
            domain = f"sov-{jurisdiction}-{domain.replace('_', '-')}"
        capsules.append(
            Capsule(
                id=f"{prefix}-{domain.removeprefix(f'{prefix}-').replace('_', '-')}-{i:0{width}d}",
                name=f"{domain.replace('_', ' ').title()} {use_case} ({size}) #{i}",
                kind=kind,
                domain=domain,
                jurisdiction=jurisdiction,
                allowed_environments=allowed,
                phase=phase,
                quality_target=quality,
                demand=Demand(
                    requests_per_s=rps,
                    tokens_per_request=tokens,
                    light_share=light,
                    generative_share=generative,
                ),
            )
        )
    return capsules
