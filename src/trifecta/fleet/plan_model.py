"""What a plan is: per-capsule assignments, replica pools, and roll-ups, serialisable as JSON
or YAML. The planner (`fleet/planner.py`) and the greedy baseline (`fleet/greedy.py`) both
produce it, and `fleet/plan_check.py` verifies one against its fleet and topology."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

from trifecta.core.settings import Phase

Layer = Literal["cognitive", "generative", "edge", "context"]


class PoolAllocation(BaseModel):
    """Replicas of one model, shaped one way, on one accelerator type in one environment."""

    environment: str
    layer: Layer
    model: str = Field(description="checkpoint tier, generative or edge model, context service")
    accelerator: str | None = Field(description="None for the context layer's CPU replicas")
    tp_degree: int = Field(description="devices per replica")
    batch: int = Field(description="concurrent sequences per replica")
    replicas: int
    capacity_per_replica: float = Field(description="tokens/s (context layer: requests/s)")
    load: float = Field(description="tokens/s (context layer: requests/s) this pool serves")
    price_per_replica_hour: float
    cost_per_hour: float

    @property
    def devices(self) -> int:
        return self.replicas * self.tp_degree if self.accelerator else 0

    @property
    def utilisation(self) -> float:
        capacity = self.replicas * self.capacity_per_replica
        return self.load / capacity if capacity else 0.0


class CapsuleAssignment(BaseModel):
    """Where one capsule runs and what it costs."""

    capsule_id: str
    kind: str
    domain: str
    environment: str = Field(description="home: cognitive tier and context shard")
    tier: str = Field(description="cognitive checkpoint tier")
    accelerators: list[str] = Field(description="accelerator types of its tier's pool")
    tokens_per_s: float
    edge_share: float = Field(description="share of its tokens served at the edge")
    edge_environments: dict[str, float] = Field(
        default_factory=dict, description="edge environment -> share of tokens"
    )
    generative_environments: dict[str, float] = Field(
        default_factory=dict, description="environment -> share of tokens to the generative layer"
    )
    cost_per_hour: float
    cost_per_month: float

    @property
    def environments(self) -> set[str]:
        """Every environment this capsule's work reaches."""
        return {self.environment, *self.edge_environments, *self.generative_environments}


class EnvironmentSummary(BaseModel):
    environment: str
    kind: str
    jurisdiction: str | None
    capsules: int = Field(description="capsules homed here")
    devices: dict[str, int] = Field(description="accelerator -> devices used")
    context_replicas: int
    cost_per_hour: float


class KindSummary(BaseModel):
    kind: str
    capsules: int
    cost_per_hour: float
    cost_per_capsule_month: float
    playbook_capsule_month: float | None = Field(description="the playbook's table, this phase")

    @property
    def ratio_to_playbook(self) -> float | None:
        if not self.playbook_capsule_month:
            return None
        return self.cost_per_capsule_month / self.playbook_capsule_month


class SolverReport(BaseModel):
    method: str
    status: str
    seconds: float
    capsules: int
    classes: int = Field(description="groups of capsules with identical requirements")
    variables: int = 0
    integer_variables: int = 0
    constraints: int = 0
    lower_bound: float | None = Field(default=None, description="no plan costs less (USD/h)")
    mip_gap: float | None = Field(default=None, description="(cost - lower bound) / cost")
    candidates: dict[str, float] = Field(
        default_factory=dict,
        description="USD/h of every plan the planner compared, by method (the cheapest kept)",
    )


class Plan(BaseModel):
    """A fleet placed on a topology for one phase, at a cost per hour."""

    phase: Phase
    topology: str
    cost_per_hour: float
    cost_per_month: float
    budget_per_hour: float | None = Field(description="the phase target, if it has one")
    hours_per_month: float
    pools: list[PoolAllocation]
    environments: list[EnvironmentSummary]
    kinds: list[KindSummary]
    tiers: dict[str, int] = Field(description="capsules per cognitive tier")
    assignments: list[CapsuleAssignment]
    solver: SolverReport

    def assignment(self, capsule_id: str) -> CapsuleAssignment:
        for item in self.assignments:
            if item.capsule_id == capsule_id:
                return item
        raise KeyError(capsule_id)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)

    def write(self, path: Path) -> None:
        """JSON for a `.json` path, YAML otherwise."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() if path.suffix.lower() == ".json" else self.to_yaml())

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))
