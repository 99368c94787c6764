"""Deterministic merge of delta operations, and grow-and-refine, on in-memory bullet state.

Pure functions: the store loads the bullets a delta touches, runs these, and writes back what
changed, all in one transaction. The rules that make merging safe to replay and reorder:

- an op id already applied is skipped (idempotence);
- an ADD's bullet id is derived from its op id, not from arrival order, so ADDs commute;
- TAG adds to counters, and the pruned state is a function of the counters, so TAGs commute;
- ops aimed at a bullet that was merged follow it to the survivor; ops aimed at a removed
  bullet are recorded and ignored (a concurrent REMOVE does not fail a whole delta);
- of near-duplicates, the smallest id survives whatever the order they arrived in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from trifecta.context.deltas import AddOp, DeltaOp, RemoveOp, TagOp, UpdateOp
from trifecta.context.models import Bullet, BulletStatus
from trifecta.core.errors import Conflict, NotFound

Vector = NDArray[np.float32]
# Statuses whose counters still move and which near-duplicates fold into.
LIVE = (BulletStatus.ACTIVE, BulletStatus.PRUNED)


def bullet_id_for(section: str, op_id: str) -> str:
    """`str-1a2b3c4d5e`: the section's first letters and a digest of the op id."""
    prefix = (section.replace("_", "") + "xxx")[:3]
    return f"{prefix}-{hashlib.blake2b(op_id.encode(), digest_size=5).hexdigest()}"


@dataclass
class BulletState:
    id: str
    section: str
    content: str
    helpful: int = 0
    harmful: int = 0
    status: BulletStatus = BulletStatus.ACTIVE
    merged_into: str | None = None
    tokens: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    @classmethod
    def of(cls, bullet: Bullet) -> BulletState:
        return cls(**bullet.model_dump())

    def to_model(self) -> Bullet:
        return Bullet(**self.__dict__)

    def key(self) -> tuple[str, str, str, int, int, str, str | None]:
        """Everything but timestamps: what two merge orders must agree on."""
        return (
            self.id,
            self.section,
            self.content,
            self.helpful,
            self.harmful,
            self.status.value,
            self.merged_into,
        )


@dataclass
class MergeReport:
    applied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    content_changed: set[str] = field(default_factory=set)
    merged: dict[str, str] = field(default_factory=dict)
    evicted: list[str] = field(default_factory=list)


def referenced_ids(ops: Iterable[DeltaOp]) -> set[str]:
    """Bullet ids the ops name or create: what the store must load before merging."""
    ids: set[str] = set()
    for op in ops:
        if isinstance(op, AddOp):
            ids.add(op.bullet_id or bullet_id_for(op.section, op.op_id))
        else:
            ids.add(op.bullet_id)
    return ids


def resolve(bullets: Mapping[str, BulletState], bullet_id: str, field_name: str) -> BulletState:
    """The bullet an id stands for now, following merges to the survivor."""
    bullet = bullets.get(bullet_id)
    seen = {bullet_id}
    while bullet is not None and bullet.status == BulletStatus.MERGED and bullet.merged_into:
        if bullet.merged_into in seen:
            break
        seen.add(bullet.merged_into)
        bullet = bullets.get(bullet.merged_into)
    if bullet is None:
        raise NotFound(f"no bullet {bullet_id!r} in this playbook", field=field_name)
    return bullet


def settle_status(bullet: BulletState, prune_margin: int) -> None:
    """Pruned exactly while harmful outweighs helpful by the margin."""
    if bullet.status in LIVE:
        pruned = bullet.harmful - bullet.helpful >= prune_margin
        bullet.status = BulletStatus.PRUNED if pruned else BulletStatus.ACTIVE


def apply_ops(
    bullets: dict[str, BulletState],
    applied_ids: set[str],
    ops: Sequence[DeltaOp],
    *,
    now: float,
    prune_margin: int,
    count_tokens: Callable[[str], int],
) -> MergeReport:
    """Apply `ops` in order to `bullets` (mutated), skipping ids in `applied_ids` (extended).
    Raises NotFound / Conflict naming the op's field; the caller discards the state then."""
    report = MergeReport()
    for i, op in enumerate(ops):
        where = f"ops[{i}].bullet_id"
        if op.op_id in applied_ids:
            report.skipped.append(op.op_id)
            continue
        if isinstance(op, AddOp):
            bullet_id = op.bullet_id or bullet_id_for(op.section, op.op_id)
            if bullet_id in bullets:
                raise Conflict(f"bullet {bullet_id!r} already exists", field=where)
            bullets[bullet_id] = BulletState(
                bullet_id,
                op.section,
                op.content,
                tokens=count_tokens(op.content),
                created_at=now,
                updated_at=now,
            )
            report.added.append(bullet_id)
            report.content_changed.add(bullet_id)
            report.touched.add(bullet_id)
        else:
            target = resolve(bullets, op.bullet_id, where)
            if target.status == BulletStatus.REMOVED and not isinstance(op, RemoveOp):
                report.ignored.append(op.op_id)
                applied_ids.add(op.op_id)
                continue
            if isinstance(op, UpdateOp):
                if op.content is not None and op.content != target.content:
                    target.content = op.content
                    target.tokens = count_tokens(op.content)
                    report.content_changed.add(target.id)
                if op.section is not None:
                    target.section = op.section
                    report.content_changed.add(target.id)
            elif isinstance(op, TagOp):
                if op.tag == "helpful":
                    target.helpful += op.count
                else:
                    target.harmful += op.count
                settle_status(target, prune_margin)
            elif isinstance(op, RemoveOp):
                target.status = BulletStatus.REMOVED
            target.updated_at = now
            report.touched.add(target.id)
        applied_ids.add(op.op_id)
        report.applied.append(op.op_id)
    return report


def merge_into(loser: BulletState, survivor: BulletState, *, now: float, prune_margin: int) -> None:
    """Fold a near-duplicate into the survivor: counters move, the loser points at it."""
    survivor.helpful += loser.helpful
    survivor.harmful += loser.harmful
    loser.helpful = loser.harmful = 0
    loser.status = BulletStatus.MERGED
    loser.merged_into = survivor.id
    loser.updated_at = survivor.updated_at = now
    settle_status(survivor, prune_margin)


def merge_duplicates(
    bullets: dict[str, BulletState],
    changed: Iterable[str],
    vectors: Mapping[str, Vector],
    *,
    threshold: float,
    now: float,
    prune_margin: int,
) -> dict[str, str]:
    """De-duplicate each changed live bullet against the live bullets of its section (cosine
    of L2-normalised embeddings >= threshold). Returns loser id -> survivor id."""
    merged: dict[str, str] = {}
    for bullet_id in sorted(changed):
        bullet = bullets.get(bullet_id)
        if bullet is None or bullet.status not in LIVE or bullet_id not in vectors:
            continue
        peers = [
            other.id
            for other in bullets.values()
            if other.id != bullet_id
            and other.status in LIVE
            and other.section == bullet.section
            and other.id in vectors
        ]
        if not peers:
            continue
        sims = np.stack([vectors[p] for p in peers]) @ vectors[bullet_id]
        group = [bullet_id] + [p for p, s in zip(peers, sims, strict=True) if s >= threshold]
        if len(group) == 1:
            continue
        survivor = bullets[min(group)]
        for member in sorted(group):
            if member != survivor.id:
                merge_into(bullets[member], survivor, now=now, prune_margin=prune_margin)
                merged[member] = survivor.id
    return merged


def evict_over_budget(
    bullets: Mapping[str, BulletState], token_budget: int, *, now: float
) -> list[str]:
    """Evict the least useful active bullets until the active ones fit the token budget."""
    active = [b for b in bullets.values() if b.status == BulletStatus.ACTIVE]
    total = sum(b.tokens for b in active)
    evicted: list[str] = []
    if total <= token_budget:
        return evicted

    def least_useful_first(b: BulletState) -> tuple[float, int, float, str]:
        return (
            (b.helpful + 1) / (b.helpful + b.harmful + 2),
            b.helpful - b.harmful,
            b.updated_at,
            b.id,
        )

    for bullet in sorted(active, key=least_useful_first):
        if total <= token_budget:
            break
        bullet.status = BulletStatus.EVICTED
        bullet.updated_at = now
        total -= bullet.tokens
        evicted.append(bullet.id)
    return evicted
