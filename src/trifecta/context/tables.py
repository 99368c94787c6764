"""The context schema, one for SQLite and Postgres (revisions in `migrations/`).

Every data row carries its domain and `seq`, the domain's write counter at the row's last
change. One counter per domain (`context_domains.version`), bumped under a row lock by every
write, gives caches a version to key on, lets copies catch up with `seq > watermark`, and is
the fence an online move closes (`state = 'moved'`). Timestamps are epoch seconds in doubles
and embeddings float32 bytes, so both back ends store identical values (checksums compare).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

domains = Table(
    "context_domains",
    metadata,
    Column("domain", String(64), primary_key=True),
    Column("version", BigInteger, nullable=False, default=0),
    Column("state", String(16), nullable=False, default="active"),
    Column("moved_to", Text, nullable=True),
    Column("updated_at", Double, nullable=False),
)

bullets = Table(
    "context_bullets",
    metadata,
    Column("domain", String(64), primary_key=True),
    Column("id", String(32), primary_key=True),
    Column("section", String(32), nullable=False),
    Column("content", Text, nullable=False),
    Column("helpful", Integer, nullable=False, default=0),
    Column("harmful", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False),
    Column("merged_into", String(32), nullable=True),
    Column("tokens", Integer, nullable=False, default=0),
    Column("embedding", LargeBinary, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("ix_context_bullets_seq", "domain", "seq"),
)

memories = Table(
    "context_memories",
    metadata,
    Column("domain", String(64), primary_key=True),
    Column("id", String(48), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("source_capsule", String(64), nullable=True),
    Column("source_task", String(64), nullable=True),
    Column("source_trajectory", String(120), nullable=True),
    Column("reinforced", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False),
    Column("embedding", LargeBinary, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("ix_context_memories_seq", "domain", "seq"),
    Index("ix_context_memories_outcome", "domain", "outcome", "created_at"),
    # The learner's lookup of stored texts (revision context_0004): by domain and content on
    # SQLite, by a hash of content on Postgres (a B-tree entry is limited to ~2.7 KB).
    Index("ix_context_memories_content", "domain", "content").ddl_if(dialect="sqlite"),
    Index("ix_context_memories_content", "content", postgresql_using="hash").ddl_if(
        dialect="postgresql"
    ),
)

applied_ops = Table(
    "context_applied_ops",
    metadata,
    Column("domain", String(64), primary_key=True),
    Column("op_id", String(120), primary_key=True),
    Column("applied_at", Double, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("ix_context_applied_ops_seq", "domain", "seq"),
)

# Trajectories acknowledged by `ContextService.submit` and not yet learned from (`pending`),
# learned (`done`, marked in the learning's own transaction), refused (`failed`) or handed to
# the shard the domain moved to (`moved`). It lives in the domain's shard, beside the rows the
# learning writes, so acknowledging and learning are each one local transaction.
learn_queue = Table(
    "context_learn_queue",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("domain", String(64), nullable=False),
    Column("trajectory_id", String(80), nullable=False),
    Column("capsule_id", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("submitted_at", Double, nullable=False),
    Column("done_at", Double, nullable=True),
    Column("version", BigInteger, nullable=True),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=True),
    # The request's query embedding (float32 bytes) the memory is keyed by; none: its text.
    Column("query_vector", LargeBinary, nullable=True),
    UniqueConstraint("domain", "trajectory_id", name="uq_context_learn_queue_trajectory"),
    Index("ix_context_learn_queue_state", "state", "id"),
)

# The control database's part: where each domain lives and who may read it.
shards = Table(
    "context_shards",
    metadata,
    Column("domain", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("place", JSON, nullable=True),
    Column("updated_at", Double, nullable=False),
)

shares = Table(
    "context_shares",
    metadata,
    Column("domain", String(64), primary_key=True),
    Column("grantee", String(64), primary_key=True),
    Column("created_at", Double, nullable=False),
)

# Kept in a copy's target database, so an interrupted copy resumes where it stopped.
copy_progress = Table(
    "context_copy_progress",
    metadata,
    Column("domain", String(64), primary_key=True),
    Column("source", String(40), primary_key=True),
    Column("phase", String(16), nullable=False),
    Column("start_version", BigInteger, nullable=False),
    Column("watermark", BigInteger, nullable=False),
    Column("cursor", JSON, nullable=False),
    Column("updated_at", Double, nullable=False),
)

# The tables that hold a domain's data, each with its primary-key columns after `domain`.
DATA_TABLES: dict[str, tuple[Table, tuple[str, ...]]] = {
    "bullets": (bullets, ("id",)),
    "memories": (memories, ("id",)),
    "applied_ops": (applied_ops, ("op_id",)),
}
