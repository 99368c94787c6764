"""Learning from a batch of queued trajectories of one domain, as the learn worker runs it.

The same learning as `learning.learn` (reflect, curate, distil; tags, the curator's delta,
memory items), split in two phases:

- planning, outside any lock: the roles run (`stage_batch`), and every text to embed
  (delta contents and memory texts of the whole batch) is embedded in a few calls instead of
  one per write (`finish_batch`); the worker stages the batches of every domain it drains
  and embeds their texts together, since a domain's batch alone is often one trajectory.
  A memory text the domain already holds, an earlier item of the batch has, or the worker
  embedded lately is not embedded again: the encoder is deterministic, so the stored vector
  is the one it would compute, and the item then reinforces its nearest neighbour exactly
  as before (an exact repeat: the stored item itself, similarity 1). ReasoningBank's items
  repeat whenever a standing query is answered the same way, and the encoder is the
  learning's main cost;
- a trajectory that asks for it (`memory_key`, the loop's) has its memory keyed by its
  prompt's embedding, not the memory text's (`query_key`): by the vector its request's
  retrieval computed, queued with it (nothing is embedded), else by embedding the prompt, a
  third of the memory text's tokens. This is how ReasoningBank's reference implementation
  retrieves (google-research/reasoning-bank, `WebArena/memory_management.py`, `screening`):
  it keeps each task's query embedding and ranks earlier tasks by the current query's
  similarity to theirs, then returns their items.
  A repeated prompt then finds its own memory first (similarity 1), and distinct prompts
  stay apart where their memory texts, alike but for a few digits, fold together;
- `apply_batch`, one transaction under the domain's lock: each trajectory's delta and
  memories are written and its queue row is marked done in that same transaction, so a row
  is either pending or its effects are committed. The rows the transaction wrote are read
  back before it commits; the worker hands them to the live view (`views.ViewCache.apply`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import bindparam, select, update

from trifecta.context import tables
from trifecta.context.deltas import AddOp, DeltaResult, UpdateOp
from trifecta.context.learn_queue import Done, mark_done_many, still_pending
from trifecta.context.memory import (
    Extraction,
    MemoryExtractor,
    memory_id_for,
    memory_text,
    text_of,
)
from trifecta.context.models import AddedMemory, MemoryDraft
from trifecta.context.roles import Curation, Curator, Reflector
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import Vector, lock_domain, to_vector
from trifecta.context.store import ShardStore
from trifecta.context.trajectory import Trajectory
from trifecta.context.writes import (
    Changes,
    DeltaBatch,
    MemoryBatch,
    PendingMemory,
    changes_in,
)
from trifecta.core.db import transaction
from trifecta.core.errors import TrifectaError

if TYPE_CHECKING:
    from trifecta.context.facade import ContextService

M = tables.memories.c


@dataclass(frozen=True)
class LearnPlan:
    """One trajectory's learning, ready to write: its queue row, delta and memories."""

    row_id: int
    trajectory: Trajectory
    curation: Curation
    extraction: Extraction
    delta_vectors: dict[str, Vector]
    memories: list[PendingMemory]


@dataclass(frozen=True)
class BatchResult:
    changes: Changes  # every row the transaction wrote
    done: int
    failed: int


def with_capsule(drafts: Sequence[MemoryDraft], capsule_id: str) -> list[MemoryDraft]:
    """Drafts with their source capsule filled in where it is missing."""
    return [
        d
        if d.source.capsule_id
        else d.model_copy(update={"source": d.source.model_copy(update={"capsule_id": capsule_id})})
        for d in drafts
    ]


def plan_memories(
    drafts: Sequence[MemoryDraft],
    vectors: Sequence[Vector],
    nearest: Callable[[Vector, str], str | None],
    threshold: float,
    earlier: list[PendingMemory],
) -> list[PendingMemory]:
    """Memory items to store: each reinforces a stored near-duplicate (`nearest`) or an earlier
    item of the same batch (`earlier`, extended in place) instead of adding a near-copy."""
    stored = [nearest(vector, draft.outcome) for draft, vector in zip(drafts, vectors, strict=True)]
    return plan_against(drafts, vectors, stored, threshold, earlier)


# Pairs of the batch whose float32 product is this close to the threshold are compared
# again as one pair alone, so the cut falls exactly where the per-pair comparison put it.
THRESHOLD_SLACK = 1e-5


def plan_against(
    drafts: Sequence[MemoryDraft],
    vectors: Sequence[Vector],
    stored: Sequence[str | None],
    threshold: float,
    earlier: list[PendingMemory],
    ids: Sequence[str] | None = None,
) -> list[PendingMemory]:
    """`plan_memories` given each draft's stored near-duplicate (`stored`, None: none); `ids`:
    the drafts' memory ids (default: `memory_id_for` by position). The batch's items a draft
    may reinforce instead (earlier ones, and the drafts before it) are screened with one
    matrix product of the drafts' vectors with theirs, not one product a pair."""
    if not drafts:
        return []
    known = len(earlier)
    pool = np.stack(
        [np.asarray(v, dtype=np.float32) for v in [*(b.vector for b in earlier), *vectors]]
    )
    # einsum's own loop: a small product, and no BLAS thread to wake (vector_index.py)
    close = np.einsum("ij,kj->ki", pool, pool[known:]) >= threshold - THRESHOLD_SLACK
    planned: list[PendingMemory] = []
    for i, (draft, vector, target) in enumerate(zip(drafts, vectors, stored, strict=True)):
        for j in np.flatnonzero(close[i, : known + i]).tolist():  # the first in batch order
            item = earlier[j]
            if (
                item.draft.outcome == draft.outcome
                and item.reinforce is None
                and float(item.vector @ vector) >= threshold  # the pair's own product decides
            ):
                target = item.id
                break
        memory_id = ids[i] if ids is not None else memory_id_for(draft, i)
        planned_item = PendingMemory(memory_id, draft, vector, target)
        planned.append(planned_item)
        earlier.append(planned_item)
    return planned


@dataclass(frozen=True)
class StagedBatch:
    """A domain's batch after the roles ran: the texts it needs embedded, not yet embedded
    (the worker embeds the texts of every domain's batch together)."""

    domain: str
    staged: list[tuple[int, Trajectory, Curation, Extraction, list[MemoryDraft]]]
    delta_texts: list[str]
    # Distinct texts to embed for memories with no vector known yet: memory texts, or the
    # prompts of memories keyed by their query.
    memory_texts: list[str]
    # Per memory draft, in order: its text's index in `memory_texts`, or its known vector.
    sources: list[int | Vector]
    reused: int = 0  # memory drafts whose vector was known (stored, remembered, in-batch)
    keyed: int = 0  # memory drafts keyed by their prompt's embedding
    carried: int = 0  # ... of which the row carried the vector (the request's retrieval's)

    @property
    def texts(self) -> list[str]:
        return self.delta_texts + self.memory_texts


# Built once: run every batch.
_STORED = select(M.title, M.description, M.content, M.embedding).where(
    M.domain == bindparam("b_domain"), M.content.in_(bindparam("b_contents", expanding=True))
)


def stored_vectors(
    store: ShardStore, domain: str, drafts: Sequence[MemoryDraft]
) -> dict[str, Vector]:
    """The stored vectors of the domain's memories whose content is a draft's, by text."""
    contents = sorted({d.content for d in drafts})
    if not contents:
        return {}
    with transaction(store.engine) as session:
        rows = session.execute(_STORED, {"b_domain": domain, "b_contents": contents}).all()
    return {text_of(r.title, r.description, r.content): to_vector(r.embedding) for r in rows}


def query_key(trajectory: Trajectory, drafts: Sequence[MemoryDraft]) -> bool:
    """Whether the trajectory's memory is keyed by its prompt's embedding rather than its
    text's: when it asks for it (`memory_key`) and distils exactly one item. Several items
    of one task would share one key (and fold into each other); a generative answer's memory
    is found by a text search for its title (the generative tuner's `MEMORY_QUERY`): both
    keep their texts' embeddings."""
    if trajectory.memory_key != "query" or len(drafts) != 1:
        return False
    return not any(step.layer == "generative" for step in trajectory.steps)


def stage_batch(
    service: ContextService,
    domain: str,
    rows: Sequence[tuple[int, Trajectory]],
    remembered: Callable[[str], Vector | None] = lambda _text: None,
    query_vectors: Mapping[int, Vector] | None = None,
) -> StagedBatch:
    """The roles' part of planning: reflect, curate and distil each trajectory; and which
    texts need embedding: a memory text not stored in the domain nor `remembered`, or, for a
    memory keyed by its query (`query_key`), the prompt unless the row was queued with its
    vector (`query_vectors`, by row id) or the prompt is `remembered`."""
    model = service.language_model
    wanted = sorted({b for _, t in rows for b in t.bullet_ids})
    used = {b.id: b for b in service.on_shard(domain, lambda s: s.bullets_by_id(domain, wanted))}
    staged: list[tuple[int, Trajectory, Curation, Extraction, list[MemoryDraft]]] = []
    for row_id, trajectory in rows:
        reflection = Reflector(model).reflect(trajectory, used)
        playbook = (
            service.playbook(trajectory.capsule_id).bullets if model and reflection.insights else []
        )
        curation = Curator(model).curate(reflection, playbook)
        extraction = MemoryExtractor(model).extract(trajectory)
        drafts = with_capsule(extraction.drafts, trajectory.capsule_id)
        staged.append((row_id, trajectory, curation, extraction, drafts))
    delta_texts = sorted(
        {
            op.content
            for _, _, curation, _, _ in staged
            if curation.delta
            for op in curation.delta.ops
            if isinstance(op, AddOp | UpdateOp) and op.content is not None
        }
    )
    all_drafts = [d for *_, drafts in staged for d in drafts]
    stored = service.on_shard(domain, lambda s: stored_vectors(s, domain, all_drafts))
    keys = query_vectors or {}
    memory_texts: list[str] = []
    sources: list[int | Vector] = []
    reused = keyed = carried = 0
    first: dict[str, int] = {}  # text -> its index in `memory_texts`, within this batch
    for row_id, trajectory, _, _, drafts in staged:
        by_query = query_key(trajectory, drafts)
        for draft in drafts:
            text = memory_text(draft)
            # A text the domain holds takes its stored vector whatever keyed it: an exact
            # repeat reinforces the stored item (similarity 1), as learning it alone does.
            known = stored.get(text)
            if known is None and by_query:
                keyed += 1
                # The prompt is a third of the memory text's tokens (17 against 54, medians
                # on the task family; the rest is answer, path, verdict): cheaper to embed.
                text = trajectory.prompt
                known = keys.get(row_id)
                carried += known is not None
            if known is None:
                known = remembered(text)
            if known is not None:
                sources.append(known)
                reused += 1
            elif text in first:
                sources.append(first[text])
                reused += 1
            else:
                first[text] = len(memory_texts)
                sources.append(len(memory_texts))
                memory_texts.append(text)
    return StagedBatch(
        domain, staged, delta_texts, memory_texts, sources, reused - carried, keyed, carried
    )


def finish_batch(
    service: ContextService, batch: StagedBatch, vectors: Sequence[Vector]
) -> list[LearnPlan]:
    """The plans of a staged batch, given the vectors of its `texts` in order."""
    domain, staged, delta_texts = batch.domain, batch.staged, batch.delta_texts
    delta_vectors = dict(zip(delta_texts, vectors[: len(delta_texts)], strict=True))
    memory_vectors = vectors[len(delta_texts) :]
    # Every memory of the batch at once: its vector, and its memory id (by its position
    # among its trajectory's drafts, as learning the trajectory alone names it).
    drafts = [d for *_, mine in staged for d in mine]
    keys = [memory_vectors[s] if isinstance(s, int) else s for s in batch.sources]
    ids = [memory_id_for(d, i) for *_, mine in staged for i, d in enumerate(mine)]
    stored = stored_neighbours(service, domain, keys, [d.outcome for d in drafts])
    memories = iter(
        plan_against(drafts, keys, stored, service.settings.memory_dedup_threshold, [], ids)
    )
    plans = []
    for row_id, trajectory, curation, extraction, mine in staged:
        ops = curation.delta.ops if curation.delta else []
        plans.append(
            LearnPlan(
                row_id,
                trajectory,
                curation,
                extraction,
                {
                    o.content: delta_vectors[o.content]
                    for o in ops
                    if isinstance(o, AddOp | UpdateOp) and o.content is not None
                },
                [next(memories) for _ in mine],
            )
        )
    return plans


def stored_neighbours(
    service: ContextService, domain: str, vectors: Sequence[Vector], outcomes: Sequence[str]
) -> list[str | None]:
    """The stored memory each new one would reinforce (its nearest of the same outcome, at
    or above the threshold), if any: with the cache, from one matrix product of the batch
    with the domain's view (`DomainView.nearest_memories`); else one shard scan a vector."""
    if not vectors:
        return []
    if not service.cache_enabled:
        probe = service.memory_probe(domain)
        return [probe(v, o) for v, o in zip(vectors, outcomes, strict=True)]
    threshold = service.settings.memory_dedup_threshold
    view = service.on_shard(
        domain,
        lambda store: service.views.get(domain, lambda _d: store, service.current_version(domain)),
    )
    return [
        hit[0] if hit is not None and hit[1] >= threshold else None
        for hit in view.nearest_memories(vectors, outcomes)
    ]


def apply_batch(
    store: ShardStore, domain: str, plans: Sequence[LearnPlan], settings: ContextSettings
) -> BatchResult:
    """Write every plan whose row is still pending and mark the rows, in one transaction.
    A plan the merge refuses (a `TrifectaError`) is rolled back alone and its row `failed`.
    Raises `DomainMoved` if a move fenced the domain off this shard.

    The statements are few whatever the batch's size: the deltas of every plan are merged
    in memory and their bullets and op ids written at the end (`DeltaBatch`; a refused
    delta leaves that state as it found it, so no savepoint is needed), so are the
    memories (`MemoryBatch`), the rows are closed by one executemany, and the domain's
    version is written once."""
    done = failed = 0
    with transaction(store.engine, write=True) as session:
        start = version = lock_domain(session, domain)
        open_rows = still_pending(session, [p.row_id for p in plans])
        todo = [p for p in plans if p.row_id in open_rows]  # the rest: another worker's
        deltas = DeltaBatch(session, domain, [d for p in todo if (d := p.curation.delta)])
        memories = MemoryBatch(session, domain, [m.id for p in todo for m in p.memories])
        closed: list[Done] = []
        for plan in todo:
            applied: DeltaResult | None = None
            delta = plan.curation.delta
            if delta is not None:
                try:
                    applied = deltas.merge(version, delta, plan.delta_vectors, settings)
                except TrifectaError as exc:
                    closed.append((plan.row_id, version, {"error": exc.to_dict()}, "failed"))
                    failed += 1
                    continue
                version = applied.version
            added: list[AddedMemory] = []
            if plan.memories:
                version, added = memories.add(version, plan.memories)
            closed.append((plan.row_id, version, _summary(applied, added), "done"))
            done += 1
        deltas.flush(session)
        memories.flush(session)
        if version != start:
            session.execute(
                update(tables.domains)
                .where(tables.domains.c.domain == domain)
                .values(version=version, updated_at=time.time())
            )
        mark_done_many(session, closed)
        changes = changes_in(session, domain, start, version)
    return BatchResult(changes, done, failed)


def _summary(applied: DeltaResult | None, added: list[AddedMemory]) -> dict[str, Any]:
    """What a queue row records of its learning (enough to check its effects later)."""
    return {
        "applied_ops": applied.applied if applied else [],
        "skipped_ops": applied.skipped if applied else [],
        "memories": [m.model_dump() for m in added],
    }
