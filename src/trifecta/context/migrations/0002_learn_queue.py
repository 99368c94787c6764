"""context learn queue: trajectories acknowledged and waiting to be learned from

Revision ID: context_0002
Revises: context_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "context_0002"
down_revision = "context_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "context_learn_queue",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("domain", sa.String(64), nullable=False),
        sa.Column("trajectory_id", sa.String(80), nullable=False),
        sa.Column("capsule_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("submitted_at", sa.Double, nullable=False),
        sa.Column("done_at", sa.Double, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.UniqueConstraint("domain", "trajectory_id", name="uq_context_learn_queue_trajectory"),
    )
    op.create_index("ix_context_learn_queue_state", "context_learn_queue", ["state", "id"])


def downgrade() -> None:
    op.drop_table("context_learn_queue")
