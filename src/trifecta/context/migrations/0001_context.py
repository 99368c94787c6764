"""context schema: domains, bullets, memories, applied ops, shard map, shares, copy progress

Revision ID: context_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "context_0001"
down_revision = None
branch_labels = ("context",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "context_domains",
        sa.Column("domain", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("moved_to", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "context_bullets",
        sa.Column("domain", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("section", sa.String(32), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("helpful", sa.Integer, nullable=False),
        sa.Column("harmful", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("merged_into", sa.String(32), nullable=True),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_context_bullets_seq", "context_bullets", ["domain", "seq"])
    op.create_table(
        "context_memories",
        sa.Column("domain", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(48), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("source_capsule", sa.String(64), nullable=True),
        sa.Column("source_task", sa.String(64), nullable=True),
        sa.Column("source_trajectory", sa.String(120), nullable=True),
        sa.Column("reinforced", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_context_memories_seq", "context_memories", ["domain", "seq"])
    op.create_index(
        "ix_context_memories_outcome", "context_memories", ["domain", "outcome", "created_at"]
    )
    op.create_table(
        "context_applied_ops",
        sa.Column("domain", sa.String(64), primary_key=True),
        sa.Column("op_id", sa.String(120), primary_key=True),
        sa.Column("applied_at", sa.Double, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_context_applied_ops_seq", "context_applied_ops", ["domain", "seq"])
    op.create_table(
        "context_shards",
        sa.Column("domain", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("place", sa.JSON, nullable=True),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    op.create_table(
        "context_shares",
        sa.Column("domain", sa.String(64), primary_key=True),
        sa.Column("grantee", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_table(
        "context_copy_progress",
        sa.Column("domain", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(40), primary_key=True),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("start_version", sa.BigInteger, nullable=False),
        sa.Column("watermark", sa.BigInteger, nullable=False),
        sa.Column("cursor", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "context_copy_progress",
        "context_shares",
        "context_shards",
        "context_applied_ops",
        "context_memories",
        "context_bullets",
        "context_domains",
    ):
        op.drop_table(table)
