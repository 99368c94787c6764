"""Delta operations: the only way a playbook changes (ACE, Zhang et al., 2025, section 3).

A delta is a small JSON document of `ADD`, `UPDATE`, `TAG` and `REMOVE` operations, each with
an operation id. The store records every applied id, so a delta sent twice changes nothing,
and the context is never rewritten whole.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trifecta.context.models import BULLET_ID, SECTION, Bullet

OP_ID = r"^[A-Za-z0-9_.:@/-]{1,120}$"


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    op_id: str = Field(pattern=OP_ID, description="unique per domain; replaying it is a no-op")


class AddOp(_Op):
    op: Literal["ADD"] = "ADD"
    section: str = Field(pattern=SECTION)
    content: str = Field(min_length=1, max_length=8000)
    bullet_id: str | None = Field(
        default=None, pattern=BULLET_ID, description="default: derived from section and op_id"
    )


class UpdateOp(_Op):
    op: Literal["UPDATE"] = "UPDATE"
    bullet_id: str = Field(pattern=BULLET_ID)
    content: str | None = Field(default=None, min_length=1, max_length=8000)
    section: str | None = Field(default=None, pattern=SECTION)

    @model_validator(mode="after")
    def _changes_something(self) -> UpdateOp:
        if self.content is None and self.section is None:
            raise ValueError("content: an UPDATE must set content or section")
        return self


class TagOp(_Op):
    op: Literal["TAG"] = "TAG"
    bullet_id: str = Field(pattern=BULLET_ID)
    tag: Literal["helpful", "harmful"]
    count: int = Field(default=1, ge=1, le=1000)


class RemoveOp(_Op):
    op: Literal["REMOVE"] = "REMOVE"
    bullet_id: str = Field(pattern=BULLET_ID)


DeltaOp = Annotated[AddOp | UpdateOp | TagOp | RemoveOp, Field(discriminator="op")]


class Delta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ops: list[DeltaOp] = Field(min_length=1)
    source: str | None = Field(default=None, max_length=200, description="who produced it")

    @model_validator(mode="after")
    def _unique_op_ids(self) -> Delta:
        seen: set[str] = set()
        for i, op in enumerate(self.ops):
            if op.op_id in seen:
                raise ValueError(f"ops[{i}].op_id: {op.op_id!r} appears twice in the delta")
            seen.add(op.op_id)
        return self


class DeltaResult(BaseModel):
    domain: str
    version: int = Field(description="the domain's write counter after this delta")
    applied: list[str] = Field(description="op ids applied now")
    skipped: list[str] = Field(description="op ids applied before (no change)")
    ignored: list[str] = Field(description="op ids aimed at removed bullets (recorded, no change)")
    added: list[str] = Field(description="ids of bullets the delta created")
    merged: dict[str, str] = Field(description="near-duplicate bullet id -> surviving bullet id")
    evicted: list[str] = Field(description="bullets dropped to keep the token budget")
    bullets: list[Bullet] = Field(description="every bullet the delta touched, as it is now")
