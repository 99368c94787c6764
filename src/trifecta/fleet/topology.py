"""Topology: the environments Trifecta runs in, their nodes and accelerators, and prices.

An `Environment` satisfies the `Place` protocol of `fleet/capsules.py` (name, kind,
jurisdiction), so `capsule.allows(environment)` is the sovereignty check everywhere. A topology
file may override accelerator prices (for the whole topology or one environment), the
cognitive tiers' planning quality, and how serving replicas are shaped.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trifecta.core.errors import NotFound
from trifecta.core.settings import PHASES, Phase
from trifecta.fleet.accelerators import ACCELERATORS, get_accelerator
from trifecta.fleet.assets import asset_path, invalid_from, read_asset, read_document
from trifecta.fleet.capsules import SLUG, Capsule
from trifecta.fleet.costs import gpu_hour_price

DEFAULT_TOPOLOGY = "topology/default.yaml"
BUILTIN_ENVIRONMENT_KINDS = ("local", "training", "inference", "edge", "sovereign")

#: One price for every phase, or a price per phase.
PriceOverride = float | dict[Phase, float]


def _check_prices(prices: dict[str, PriceOverride]) -> dict[str, PriceOverride]:
    for name, value in prices.items():
        if name not in ACCELERATORS:
            raise ValueError(f"unknown accelerator {name!r} (allowed: {', '.join(ACCELERATORS)})")
        values = [value] if isinstance(value, int | float) else list(value.values())
        if any(v < 0 for v in values):
            raise ValueError(f"price of {name!r} must not be negative")
    return prices


class Node(BaseModel):
    """A group of identical machines' accelerators in one environment."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SLUG)
    accelerator: str = Field(description="a name from the accelerator catalog")
    count: int = Field(ge=0, description="devices available")
    region: str | None = Field(default=None, description="default: the environment's")

    @field_validator("accelerator")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ACCELERATORS:
            raise ValueError(f"unknown accelerator {value!r} (allowed: {', '.join(ACCELERATORS)})")
        return value


class Environment(BaseModel):
    """A place capsules run in: a cloud pool, the edge mesh, an on-premises sovereign site."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SLUG)
    kind: str = Field(pattern=SLUG, description="local, training, inference, edge, sovereign, ...")
    provider: str = Field(min_length=1)
    region: str = Field(min_length=1)
    jurisdiction: str | None = Field(default=None, pattern=SLUG, description="legal region")
    nodes: list[Node] = Field(default_factory=list)
    prices: dict[str, PriceOverride] = Field(default_factory=dict, description="USD/device-hour")
    phases: list[Phase] = Field(
        default_factory=lambda: list(PHASES), description="phases in which the planner may use it"
    )
    serving: bool = Field(default=True, description="False: not for serving (a training pool)")
    reserved_for: list[str] | None = Field(
        default=None, description="only capsules of these kinds may be placed here"
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="where this environment's server (`trifecta env serve`) answers, for a "
        "federation of static sites; `trifecta up` assigns loopback URLs itself",
    )

    @field_validator("prices")
    @classmethod
    def _known_prices(cls, value: dict[str, PriceOverride]) -> dict[str, PriceOverride]:
        return _check_prices(value)

    @model_validator(mode="after")
    def _unique_nodes(self) -> Environment:
        names = [n.name for n in self.nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"nodes: duplicate node name {duplicates[0]!r}")
        return self

    def devices(self, accelerator: str) -> int:
        """How many devices of `accelerator` this environment has."""
        return sum(n.count for n in self.nodes if n.accelerator == accelerator)

    @property
    def accelerators(self) -> list[str]:
        """Accelerator types present, in catalog order."""
        present = {n.accelerator for n in self.nodes if n.count > 0}
        return [name for name in ACCELERATORS if name in present]

    def available_in(self, phase: Phase) -> bool:
        return self.serving and phase in self.phases

    def admits(self, capsule: Capsule) -> bool:
        """May the planner place `capsule`'s work here? The capsule's own sovereignty rule
        (`Capsule.allows`) and this environment's reservation, if any."""
        reserved = self.reserved_for is None or capsule.kind in self.reserved_for
        return reserved and capsule.allows(self)


class ServingPolicy(BaseModel):
    """How serving replicas are shaped when the planner sizes them."""

    model_config = ConfigDict(extra="forbid")

    cognitive_context: int = Field(default=2048, gt=0, description="tokens per sequence")
    generative_context: int = Field(default=2048, gt=0)
    edge_context: int = Field(default=1024, gt=0, description="light requests are short")
    batch_limit: int = Field(default=64, gt=0, description="concurrent sequences per replica")
    context_rps_per_replica: float = Field(
        default=100.0,
        gt=0,
        description="requests/s one context-layer CPU replica serves (assumption: retrieval "
        "plus playbook lookup, about 10 ms of CPU per request on 4 vCPUs)",
    )


def _default_tier_quality() -> dict[str, float]:
    return dict(read_asset("fleet/models.yaml")["cognitive_tiers"])


class Topology(BaseModel):
    """Every environment, with global price overrides and planning policies."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="topology", min_length=1)
    description: str = ""
    environments: list[Environment] = Field(min_length=1)
    prices: dict[str, PriceOverride] = Field(default_factory=dict, description="USD/device-hour")
    tier_quality: dict[str, float] = Field(default_factory=_default_tier_quality)
    serving: ServingPolicy = Field(default_factory=ServingPolicy)

    @field_validator("prices")
    @classmethod
    def _known_prices(cls, value: dict[str, PriceOverride]) -> dict[str, PriceOverride]:
        return _check_prices(value)

    @field_validator("tier_quality")
    @classmethod
    def _tiers(cls, value: dict[str, float]) -> dict[str, float]:
        from trifecta.fleet.sizing import PRESETS

        for name, quality in value.items():
            if name not in PRESETS:
                raise ValueError(f"unknown model {name!r} (allowed: {', '.join(PRESETS)})")
            if not 0 < quality <= 1:
                raise ValueError(f"quality of {name!r} must be in (0, 1]")
        if not value:
            raise ValueError("at least one cognitive tier is needed")
        return dict(sorted(value.items(), key=lambda item: item[1]))

    @model_validator(mode="after")
    def _unique_environments(self) -> Topology:
        names = [e.name for e in self.environments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"environments: duplicate environment name {duplicates[0]!r}")
        return self

    def environment(self, name: str) -> Environment:
        for env in self.environments:
            if env.name == name:
                return env
        raise NotFound(
            f"no environment {name!r}",
            field="environment",
            allowed=[e.name for e in self.environments],
        )

    def price(self, environment: Environment, accelerator: str, phase: Phase) -> float:
        """USD per device-hour in `phase`: the environment's override for it, else the
        topology's, else the cost table."""
        get_accelerator(accelerator)
        for layer in (environment.prices, self.prices):
            override = layer.get(accelerator)
            if isinstance(override, int | float):
                return float(override)
            if override is not None and phase in override:
                return float(override[phase])
        return gpu_hour_price(accelerator, phase)

    def serving_environments(self, phase: Phase) -> list[Environment]:
        return [e for e in self.environments if e.available_in(phase)]


def parse_topology(data: object, *, source: str = "topology") -> Topology:
    """A topology from parsed YAML/JSON, with errors naming the field."""
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        raise invalid_from(exc, prefix=source) from None


@lru_cache(maxsize=1)
def _default_topology() -> Topology:
    return parse_topology(read_asset(DEFAULT_TOPOLOGY))


def load_topology(path: Path | None = None) -> Topology:
    """The topology in `path` (YAML or JSON), or the shipped default when None."""
    if path is None:
        return _default_topology().model_copy(deep=True)
    return parse_topology(read_document(Path(path), field="topology"))


def default_topology_path() -> Path:
    return asset_path(DEFAULT_TOPOLOGY)
