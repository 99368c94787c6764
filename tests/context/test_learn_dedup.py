"""The learning worker folds a memory whose distilled content the domain already holds into
that item before embedding it (`learn_batch.stage_batch`): fewer encoder calls, the same
memories stored and retrieved as learning each trajectory alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray
from sqlalchemy import select

from tests.context.conftest import ServiceFactory, register_capsules
from trifecta.context import tables
from trifecta.context.facade import ContextService
from trifecta.context.learn_worker import LearnWorker
from trifecta.context.models import RetrieveRequest
from trifecta.context.settings import ContextSettings
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.core.db import transaction
from trifecta.core.embeddings import MiniLMEmbedder

M = tables.memories.c

QUERIES = [
    "t=2,p=2,r=6;t+p?",
    "t=5,p=5,r=4;t+p?",
    "which lookups failed?",
    "add the two readings",
]


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: MiniLMEmbedder):
        self.inner = inner
        self.texts: list[str] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.texts.extend(texts)
        return self.inner.embed(texts)


def trajectories() -> list[Trajectory]:
    """Six distinct tasks, then each of the first four asked again with the same answer and
    path (a standing query answered the same way): ten trajectories, six distinct memories."""
    asked = [*range(6), 0, 1, 2, 3]
    return [
        Trajectory(
            id=f"traj-dedup-{n:03d}",
            capsule_id="twin-a",
            prompt=f"t={i},p={i},r={(3 * i) % 11};t+p?",
            answer=str(2 * i),
            outcome="success" if i % 3 else "failure",
            judge="verifier",
            task_kind="lookup_add",
            steps=[TrajectoryStep(layer="edge", tier="node-1", mean_entropy=0.25)],
        )
        for n, i in enumerate(asked)
    ]


def counted(url: str, embedder: CountingEmbedder) -> ContextService:
    register_capsules(url)
    return ContextService(
        control_url=url, embedder=embedder, settings=ContextSettings(tenancy_ttl_s=0)
    )


def stored(service: ContextService) -> list[tuple[str, int, str]]:
    """Every memory row of the domain: id, reinforcement count, status."""
    with transaction(service.router.store_for("plant").engine) as session:
        rows = session.execute(select(M.id, M.reinforced, M.status).where(M.domain == "plant"))
        return sorted((str(r.id), int(r.reinforced), str(r.status)) for r in rows)


def retrieved(service: ContextService) -> list[list[tuple[str, int]]]:
    """The memories each query retrieves, in rank order, with their reinforcement counts."""
    out = []
    for query in QUERIES:
        found = service.retrieve("twin-a", RetrieveRequest(query=query, k_memories=5))
        out.append([(h.memory.id, h.memory.reinforced) for h in found.memories])
    return out


def test_a_repeated_memory_text_is_not_embedded_again(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    counting = CountingEmbedder(embedder)
    service = counted(sqlite_url, counting)
    for t in trajectories()[:6]:  # learned first
        service.submit(t)
    assert service.drain(timeout=60)
    assert len(counting.texts) == 6
    for t in trajectories()[6:]:  # the repeats: their vectors are known
        service.submit(t)
    assert service.drain(timeout=60)
    assert len(counting.texts) == 6  # not one more text through the encoder
    assert service.learning_stats()["vectors_reused"] == 4
    rows = service.learn_queue("twin-a")
    assert [r.state for r in rows] == ["done"] * 10
    statuses = [m["status"] for r in rows[6:] for m in (r.result or {})["memories"]]
    assert statuses == ["reinforced"] * 4
    items = stored(service)
    assert sum(r for _, r, _ in items) == 10 - len(items)  # every draft stored or reinforcing
    service.close()


def test_a_stored_memory_text_is_not_embedded_by_a_new_worker(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    """A worker that never embedded the text (another process, or after a restart) finds
    its vector among the domain's stored memories."""
    first = counted(sqlite_url, CountingEmbedder(embedder))
    for t in trajectories()[:2]:  # a failure and a success: two stored items
        first.submit(t)
    assert first.drain(timeout=60)
    first.close()
    counting = CountingEmbedder(embedder)
    second = counted(sqlite_url, counting)
    for t in trajectories()[6:8]:  # the same two tasks asked again
        second.submit(t)
    assert second.drain(timeout=60)
    assert counting.texts == []
    assert stored(second) == [(m, 1, status) for m, _, status in stored(first)]
    second.close()


def test_repeats_within_one_batch_are_embedded_once(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    counting = CountingEmbedder(embedder)
    service = counted(sqlite_url, counting)
    queue = service.router.store_for("plant").queue
    for t in trajectories():  # queued without waking the worker: one drain, one batch
        queue.enqueue("plant", t)
    assert service.drain(timeout=60)
    assert len(counting.texts) == len(set(counting.texts)) == 6
    assert service.learning_stats()["vectors_reused"] == 4
    items = stored(service)
    assert sum(r for _, r, _ in items) == 10 - len(items)
    service.close()


@pytest.mark.slow
def test_retrieval_is_the_same_as_learning_each_trajectory_alone(
    make_service: ServiceFactory, sqlite_url: str
) -> None:
    """The reference: `learn` one trajectory at a time (every memory embedded and matched by
    its nearest neighbour); against it, the queue and the worker (repeats merged by key)."""
    alone = make_service(sqlite_url)
    for t in trajectories():
        alone.learn(t)
    other_url = sqlite_url.replace("test.db", "queued.db")
    queued = make_service(other_url)
    for t in trajectories():
        queued.submit(t)
    assert queued.drain(timeout=60)
    assert stored(queued) == stored(alone)
    assert retrieved(queued) == retrieved(alone)
    queued.close()
    alone.close()


def test_the_worker_embeds_in_bfloat16_close_to_float32_or_in_float32_when_told(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    text = "lookup_add solved via edge/node-1. verifier judged the answer correct Task: t=1"
    exact = embedder.embed([text])[0]
    register_capsules(sqlite_url)
    plain = ContextService(
        control_url=sqlite_url,
        embedder=embedder,
        settings=ContextSettings(tenancy_ttl_s=0, learn_bfloat16=False),
    )
    # An embedder object passed in cannot cross a process: the worker is a thread of this one.
    assert isinstance(plain.learner, LearnWorker)
    assert np.allclose(plain.learner.embed([text])[0], exact, atol=1e-5)
    assert plain.learner.bf16 is False
    fast = counted(sqlite_url, CountingEmbedder(embedder))
    assert isinstance(fast.learner, LearnWorker)
    vector = fast.learner.embed([text])[0]
    assert float(vector @ exact) > 0.9999  # bfloat16 where the CPU has it, else float32
    plain.close()
    fast.close()
