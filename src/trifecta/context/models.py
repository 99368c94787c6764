"""What the context layer stores and returns: playbook bullets and ReasoningBank memories.

These are the boundary models of the Python API and of the HTTP service alike; the
orchestrator acts on their structured fields (ids, counters, outcomes, sources) and hands
`prompt` text to real language-model backends.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trifecta.fleet.capsules import SLUG

SECTION = r"^[a-z][a-z0-9_]{1,31}$"
# `str-1a2b3c4d`: three letters of the section, then a hex digest (see `merge.bullet_id_for`).
BULLET_ID = r"^[a-z0-9]{3}-[0-9a-z]{4,24}$"
MEMORY_ID = r"^mem-[0-9a-z]{4,40}$"
# Times and ages in seconds stay below year 2100 (finite: `Infinity` made the cut-off NaN).
MAX_EPOCH_S = 4_102_444_800.0
DEFAULT_SECTIONS = ("strategies", "pitfalls", "formulas", "routing", "checks")

Outcome = Literal["success", "failure", "unknown"]
MemoryOutcome = Literal["success", "failure"]
# Which road a role took: a configured language model, or the trajectory's outcome signal and
# structured fields alone (no text is invented then).
RoleMode = Literal["language_model", "outcome_signal"]


class BulletStatus(StrEnum):
    ACTIVE = "active"
    PRUNED = "pruned"  # harmful outweighs helpful by the margin; returns if counters recover
    MERGED = "merged"  # a near-duplicate of `merged_into`, which took over its counters
    EVICTED = "evicted"  # least useful when the playbook outgrew its token budget
    REMOVED = "removed"  # an explicit REMOVE operation


class Bullet(BaseModel):
    """One itemised playbook entry with its usefulness counters."""

    model_config = ConfigDict(frozen=True)

    id: str
    section: str
    content: str
    helpful: int = 0
    harmful: int = 0
    status: BulletStatus = BulletStatus.ACTIVE
    merged_into: str | None = None
    tokens: int = 0
    created_at: float
    updated_at: float

    @property
    def net(self) -> int:
        return self.helpful - self.harmful

    @property
    def usefulness(self) -> float:
        """Laplace-smoothed share of helpful tags: 0.5 for an untried bullet."""
        return (self.helpful + 1) / (self.helpful + self.harmful + 2)


class RankedBullet(BaseModel):
    bullet: Bullet
    score: float = Field(description="rank key: relevance to the query plus usefulness")
    relevance: float | None = Field(
        default=None, description="cosine to the query, if one was given"
    )


class PlaybookView(BaseModel):
    domain: str
    version: int = Field(description="the domain's write counter this view reflects")
    bullets: list[Bullet]
    total_tokens: int


class RenderedPlaybook(BaseModel):
    domain: str
    version: int
    prompt: str = Field(description="the playbook as prompt text, most useful bullets first")
    tokens: int
    token_budget: int
    bullets: list[RankedBullet] = Field(description="the bullets the prompt holds, in rank order")
    omitted: int = Field(description="active bullets left out to stay within the budget")


class MemorySource(BaseModel):
    capsule_id: str | None = None
    task_id: str | None = None
    trajectory_id: str | None = None


class MemoryDraft(BaseModel):
    """A memory item to add (the id is derived from its source and text when not given)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, pattern=MEMORY_ID)
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=1000)
    content: str = Field(min_length=1, max_length=8000)
    outcome: MemoryOutcome
    source: MemorySource = Field(default_factory=MemorySource)


class MemoryItem(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    domain: str
    title: str
    description: str
    content: str
    outcome: MemoryOutcome
    source: MemorySource
    reinforced: int = Field(default=0, description="near-identical items folded into this one")
    created_at: float
    updated_at: float


class MemoryHit(BaseModel):
    memory: MemoryItem
    similarity: float


class MemoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000)
    k: int = Field(default=5, ge=1, le=100)
    outcome: MemoryOutcome | None = Field(default=None, description="only successes or failures")
    since: float | None = Field(
        default=None, ge=0, le=MAX_EPOCH_S, description="only items created at or after (epoch s)"
    )
    max_age_s: float | None = Field(
        default=None, gt=0, le=MAX_EPOCH_S, description="only items younger than this"
    )
    min_similarity: float = Field(default=-1.0, ge=-1, le=1)
    domain: str | None = Field(
        default=None, pattern=SLUG, description="another domain to read (must be shared)"
    )


class MemorySearchResult(BaseModel):
    domain: str
    version: int
    hits: list[MemoryHit]


class AddedMemory(BaseModel):
    id: str
    status: Literal["added", "reinforced", "exists"]
    reinforced_id: str | None = Field(default=None, description="the item it was folded into")


class AddMemoriesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[MemoryDraft] = Field(min_length=1, max_length=500)


class AddMemoriesResult(BaseModel):
    domain: str
    version: int
    items: list[AddedMemory]


class RenderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_budget: int | None = Field(default=None, ge=16, le=200_000)
    query: str | None = Field(default=None, max_length=2000)
    domain: str | None = Field(default=None, pattern=SLUG)


class RetrieveRequest(BaseModel):
    """What the orchestrator asks before serving a request."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=2000, description="the task prompt")
    token_budget: int | None = Field(default=None, ge=16, le=200_000)
    k_memories: int = Field(default=3, ge=0, le=50)
    memory_outcome: MemoryOutcome | None = None
    memory_max_age_s: float | None = Field(default=None, gt=0, le=MAX_EPOCH_S)
    domain: str | None = Field(default=None, pattern=SLUG)


class Retrieval(BaseModel):
    """Bullets and memories for one request: structured for code, rendered for LLMs."""

    domain: str
    version: int
    bullets: list[RankedBullet]
    memories: list[MemoryHit]
    prompt: str = Field(description="playbook and memories as prompt text within the budget")
    tokens: int


class DomainStats(BaseModel):
    domain: str
    version: int
    bullets: dict[str, int] = Field(description="bullet count by status (active, pruned, ...)")
    memories: int

    @property
    def active_bullets(self) -> int:
        return self.bullets.get("active", 0)
