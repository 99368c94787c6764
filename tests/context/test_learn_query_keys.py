"""Memories keyed by their request's query embedding (ReasoningBank's reference retrieval):
the learn queue carries the vector the retrieval computed, the worker embeds nothing for it
(or only the prompt when no retrieval ran), and a prompt like an earlier one retrieves that
one's memory. Trajectories that do not ask for it (`context learn`, outside clients, old
queue rows) keep the memory text's embedding."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from sqlalchemy import select

from tests.context.conftest import register_capsules
from tests.context.test_learn_dedup import CountingEmbedder
from tests.context.test_memory_content_index import at_revision
from trifecta.context import tables
from trifecta.context.facade import ContextService
from trifecta.context.memory import memory_text, structured_draft
from trifecta.context.models import RetrieveRequest
from trifecta.context.settings import ContextSettings
from trifecta.context.sql import Vector, to_vector
from trifecta.context.trajectory import Trajectory, TrajectoryStep
from trifecta.core.db import ensure_schema, transaction
from trifecta.core.embeddings import MiniLMEmbedder

M, Q = tables.memories.c, tables.learn_queue.c

# Prompts of the task family's shapes (lookups, sums, telemetry questions).
PROMPTS = [
    "t=41,p=17,r=63;t+r?",
    "12+35?",
    "0-80+90?",
    "which lookups failed?",
    "add the two readings",
    "pressure=7,flow=3;pressure*flow?",
]


def served(
    i: int, prompt: str, *, layer: str = "cognitive", key: Literal["text", "query"] = "query"
) -> Trajectory:
    """A trajectory as the loop submits it (keyed by its query unless `key` says text)."""
    return Trajectory(
        id=f"traj-key-{i:03d}",
        capsule_id="twin-a",
        prompt=prompt,
        answer=str(i),
        outcome="success",
        judge="verifier",
        task_kind="lookup_add",
        steps=[TrajectoryStep(layer=layer, tier="small", mean_entropy=0.2)],
        memory_key=key,
    )


def counted(url: str, embedder: CountingEmbedder) -> ContextService:
    register_capsules(url)
    return ContextService(
        control_url=url, embedder=embedder, settings=ContextSettings(tenancy_ttl_s=0)
    )


def retrieve(service: ContextService, prompt: str, k: int = 3) -> list[str]:
    """The trajectory ids of the memories a request's retrieval returns, best first."""
    found = service.retrieve("twin-a", RetrieveRequest(query=prompt, k_memories=k))
    return [h.memory.source.trajectory_id or "" for h in found.memories]


def stored_vectors(service: ContextService) -> dict[str, Vector]:
    with transaction(service.router.store_for("plant").engine) as session:
        rows = session.execute(select(M.source_trajectory, M.embedding).where(M.domain == "plant"))
        return {str(r.source_trajectory): to_vector(r.embedding) for r in rows}


def test_a_trajectory_queued_with_its_query_vector_embeds_nothing(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    counting = CountingEmbedder(embedder)
    service = counted(sqlite_url, counting)
    for i, prompt in enumerate(PROMPTS):  # as the loop serves a request: retrieve, then learn
        retrieve(service, prompt)
        service.submit(served(i, prompt))
    assert service.drain(timeout=60)
    assert counting.texts == PROMPTS  # the queries, once each; no memory text
    stats = service.learning_stats()
    assert stats["keyed_by_query"] == stats["query_vectors_carried"] == len(PROMPTS)
    keys = stored_vectors(service)
    for i, prompt in enumerate(PROMPTS):
        assert np.array_equal(keys[f"traj-key-{i:03d}"], service.query_vectors.vector(prompt))
    with transaction(service.router.store_for("plant").engine) as session:
        assert None not in session.execute(select(Q.query_vector)).scalars().all()
    service.close()


def test_a_query_keyed_memory_without_a_retrieval_embeds_only_its_prompt(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    """A route that retrieved nothing (the edge): the worker embeds the short prompt."""
    counting = CountingEmbedder(embedder)
    service = counted(sqlite_url, counting)
    service.submit(served(0, PROMPTS[0], layer="edge"))
    assert service.drain(timeout=60)
    assert counting.texts == [PROMPTS[0]]
    stats = service.learning_stats()
    assert (stats["keyed_by_query"], stats["query_vectors_carried"]) == (1, 0)
    vector = stored_vectors(service)["traj-key-000"]
    assert float(vector @ service.query_vectors.vector(PROMPTS[0])) > 0.999  # bfloat16
    service.close()


def test_a_text_keyed_trajectory_embeds_its_memory_text_as_before(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    """An outside client's trajectory (`memory_key` text, the default), even one whose prompt
    this service retrieved: the memory text, as before."""
    counting = CountingEmbedder(embedder)
    service = counted(sqlite_url, counting)
    trajectory = served(0, PROMPTS[0], key="text")
    retrieve(service, trajectory.prompt)
    service.submit(trajectory)
    assert service.drain(timeout=60)
    text = memory_text(structured_draft(trajectory))
    assert counting.texts == [trajectory.prompt, text]
    assert service.learning_stats()["keyed_by_query"] == 0
    vector = stored_vectors(service)["traj-key-000"]
    assert float(vector @ embedder.embed([text])[0]) > 0.999  # bfloat16 where native
    service.close()


def test_a_generative_answer_keeps_its_text_key(embedder: MiniLMEmbedder, sqlite_url: str) -> None:
    """The generative tuner finds those memories by a text search for their title."""
    counting = CountingEmbedder(embedder)
    service = counted(sqlite_url, counting)
    trajectory = served(0, PROMPTS[0], layer="generative")
    retrieve(service, trajectory.prompt)
    service.submit(trajectory)
    assert service.drain(timeout=60)
    assert counting.texts == [trajectory.prompt, memory_text(structured_draft(trajectory))]
    service.close()


def test_a_prompt_like_an_earlier_one_retrieves_its_memory(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    service = counted(sqlite_url, CountingEmbedder(embedder))
    for i, prompt in enumerate(PROMPTS):
        retrieve(service, prompt)
        service.submit(served(i, prompt))
    assert service.drain(timeout=60)
    for i, prompt in enumerate(PROMPTS):  # asked again: its own memory first
        assert retrieve(service, prompt)[0] == f"traj-key-{i:03d}"
    assert retrieve(service, "t=41,p=17,r=64;t+r-p?")[0] == "traj-key-000"
    assert retrieve(service, "12+36?")[0] == "traj-key-001"
    assert retrieve(service, "which sensor lookups failed?")[0] == "traj-key-003"
    # Distinct prompts stay distinct memories: none folded into another.
    assert len(stored_vectors(service)) == len(PROMPTS)
    # The same prompt answered the same way again reinforces its memory, embedding nothing.
    retrieve(service, PROMPTS[1])
    service.submit(served(1, PROMPTS[1]).model_copy(update={"id": "traj-key-again"}))
    assert service.drain(timeout=60)
    found = service.retrieve("twin-a", RetrieveRequest(query=PROMPTS[1], k_memories=1))
    assert found.memories[0].memory.reinforced == 1
    service.close()


def test_a_recovered_row_is_keyed_by_its_stored_query_vector(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    """The vector is durable with the row: a new process (nothing cached) learns it the same."""
    register_capsules(sqlite_url)
    first = counted(sqlite_url, CountingEmbedder(embedder))
    key = first.query_vectors.vector(PROMPTS[2])
    first.router.store_for("plant").queue.enqueue("plant", served(2, PROMPTS[2]), key)
    first.close()  # queued, never learned here
    counting = CountingEmbedder(embedder)
    second = counted(sqlite_url, counting)
    assert second.drain(timeout=60)
    assert counting.texts == []
    assert np.array_equal(stored_vectors(second)["traj-key-002"], key)
    second.close()


def test_a_row_queued_before_the_migration_is_learned_by_its_text(
    embedder: MiniLMEmbedder, sqlite_url: str
) -> None:
    """A database at revision context_0002 with a pending row; the next process upgrades it
    (the column is nullable) and learns the row by its memory text."""
    engine = at_revision(sqlite_url, "context_0002")
    with engine.begin() as connection:
        trajectory = served(4, PROMPTS[4])
        connection.exec_driver_sql(
            "INSERT INTO context_learn_queue (domain, trajectory_id, capsule_id, payload, state,"
            " attempts, submitted_at) VALUES ('plant', ?, 'twin-a', ?, 'pending', 0, ?)",
            (trajectory.id, trajectory.model_dump_json(exclude={"memory_key"}), time.time()),
        )
    ensure_schema(engine, "trifecta.context")  # to the newest revision
    engine.dispose()
    counting = CountingEmbedder(embedder)
    service = counted(sqlite_url, counting)
    assert service.drain(timeout=60)
    assert counting.texts == [memory_text(structured_draft(trajectory))]
    assert [r.state for r in service.learn_queue("twin-a")] == ["done"]
    service.close()
