"""Learning from one trajectory: reflect, curate, distil (ACE + ReasoningBank in one call)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from trifecta.context.deltas import DeltaResult
from trifecta.context.memory import Extraction, MemoryExtractor
from trifecta.context.models import AddedMemory, Outcome, RoleMode
from trifecta.context.roles import Curation, Curator, Reflection, Reflector
from trifecta.context.trajectory import Trajectory

if TYPE_CHECKING:
    from trifecta.context.facade import ContextService


class LearnResult(BaseModel):
    trajectory_id: str
    domain: str
    outcome: Outcome
    modes: dict[str, RoleMode] = Field(description="reflector, curator, extractor -> mode")
    reflection: Reflection
    curation: Curation
    delta: DeltaResult | None = Field(description="the curator's delta as applied")
    extraction: Extraction
    memories: list[AddedMemory]
    version: int = Field(description="the domain's version after learning")


def learn(service: ContextService, trajectory: Trajectory) -> LearnResult:
    domain = service.tenancy.write_domain(trajectory.capsule_id, trajectory.domain)
    model = service.language_model
    used = service.on_shard(domain, lambda s: s.bullets_by_id(domain, trajectory.bullet_ids))
    reflection = Reflector(model).reflect(trajectory, {b.id: b for b in used})
    # The curator reads the playbook only to write new text; on the outcome signal it only tags.
    playbook = (
        service.playbook(trajectory.capsule_id).bullets if model and reflection.insights else []
    )
    curation = Curator(model).curate(reflection, playbook)
    applied = service.apply_delta(trajectory.capsule_id, curation.delta) if curation.delta else None
    extraction = MemoryExtractor(model).extract(trajectory)
    added = (
        service.add_memories(trajectory.capsule_id, extraction.drafts)
        if extraction.drafts
        else None
    )
    version = max(
        applied.version if applied else 0,
        added.version if added else 0,
    ) or service.current_version(domain)
    return LearnResult(
        trajectory_id=trajectory.id,
        domain=domain,
        outcome=trajectory.outcome,
        modes={
            "reflector": reflection.mode,
            "curator": curation.mode,
            "extractor": extraction.mode,
        },
        reflection=reflection,
        curation=curation,
        delta=applied,
        extraction=extraction,
        memories=added.items if added else [],
        version=version,
    )
