"""Revision context_0004: the index the learner's lookup of stored memory texts uses.

A database at context_0003 holding memories is upgraded by the next process that opens it;
the lookup then reads the index, not every memory of the domain, and finds what it found."""

from __future__ import annotations

import importlib.resources
import time

import numpy as np
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect, text

from trifecta.context import tables
from trifecta.context.learn_batch import _STORED, stored_vectors
from trifecta.context.memory import memory_text
from trifecta.context.models import MemoryDraft, MemorySource
from trifecta.context.store import ShardStore
from trifecta.context.writes import PendingMemory
from trifecta.core.db import create_db_engine, ensure_schema, migrations_dir

INDEX = "ix_context_memories_content"


def draft(i: int, domain: str) -> MemoryDraft:
    return MemoryDraft(
        title=f"lookup solved via edge {i}",
        description="verifier judged the answer correct",
        content=f"Task: {domain} {i}+1?\nAnswer: {i + 1}\nPath: edge",
        outcome="success",
        source=MemorySource(capsule_id="twin-a", task_id=f"t{i}", trajectory_id=f"tr-{i}"),
    )


def vector(i: int) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


def at_revision(url: str, revision: str) -> Engine:
    engine = create_db_engine(url)
    config = Config()
    config.set_main_option(
        "script_location", str(importlib.resources.files("trifecta.core") / "alembic")
    )
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(migrations_dir("trifecta.context")))
    config.attributes["version_table"] = "alembic_version_context"
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return engine


def test_an_existing_database_is_upgraded_and_the_lookup_uses_the_index(db_url: str) -> None:
    engine = at_revision(db_url, "context_0003")
    now = time.time()
    with engine.begin() as connection:  # memories written before the revision
        connection.execute(
            tables.memories.insert(),
            [
                {
                    "domain": domain,
                    "id": f"mem-{domain}-{i}",
                    "title": d.title,
                    "description": d.description,
                    "content": d.content,
                    "outcome": d.outcome,
                    "source_capsule": "twin-a",
                    "reinforced": 0,
                    "status": "active",
                    "embedding": vector(i).tobytes(),
                    "created_at": now,
                    "updated_at": now,
                    "seq": i + 1,
                }
                for domain in ("plant", "grid")
                for i in range(400)
                if (d := draft(i, domain))
            ],
        )
    assert INDEX not in {ix["name"] for ix in inspect(engine).get_indexes("context_memories")}
    ensure_schema(engine, "trifecta.context")  # what the next process to open it does
    assert INDEX in {ix["name"] for ix in inspect(engine).get_indexes("context_memories")}
    engine.dispose()

    store = ShardStore(db_url)
    asked = [draft(3, "plant"), draft(17, "plant"), draft(5, "grid"), draft(999, "plant")]
    found = stored_vectors(store, "plant", asked)
    assert sorted(found) == sorted(memory_text(d) for d in asked[:2])
    assert np.array_equal(found[memory_text(asked[1])], vector(17))
    # A memory added after the upgrade is found the same way.
    store.add_memories("plant", [PendingMemory("mem-new", draft(999, "plant"), vector(999))])
    assert memory_text(asked[3]) in stored_vectors(store, "plant", asked)

    compiled = _STORED.params(b_domain="plant", b_contents=[d.content for d in asked]).compile(
        store.engine, compile_kwargs={"render_postcompile": True, "literal_binds": True}
    )
    with store.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Statistics, and no sequential scan: over a few hundred rows a scan costs less.
            connection.exec_driver_sql("ANALYZE context_memories")
            connection.exec_driver_sql("SET enable_seqscan = off")
            explain = "EXPLAIN "
        else:
            explain = "EXPLAIN QUERY PLAN "
        plan = connection.execute(text(explain + str(compiled))).all()
    assert INDEX in " ".join(str(row) for row in plan)
