"""context memories: an index that finds a domain's memories by their content

Revision ID: context_0004
Revises: context_0003
"""

from alembic import op

revision = "context_0004"
down_revision = "context_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The learner looks up, every batch, which of its drafts' texts a domain already holds
    # (`learn_batch.stored_vectors`); without an index that read scanned all the domain's
    # memories. Postgres: a hash index on content alone (a B-tree entry cannot hold a text
    # over ~2.7 KB, and a memory's content may be longer); SQLite: domain and content.
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_context_memories_content",
            "context_memories",
            ["content"],
            postgresql_using="hash",
        )
    else:
        op.create_index("ix_context_memories_content", "context_memories", ["domain", "content"])


def downgrade() -> None:
    op.drop_index("ix_context_memories_content", "context_memories")
