"""generative layer: router-bias versions, expert masks, routed traffic per capsule

Revision ID: generative_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "generative_0001"
down_revision = None
branch_labels = ("generative",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generative_bias_versions",
        sa.Column("capsule_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("bias", sa.JSON, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_table(
        "generative_masks",
        sa.Column("capsule_id", sa.String(64), primary_key=True),
        sa.Column("layers", sa.JSON, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_table(
        "generative_traffic",
        sa.Column("capsule_id", sa.String(64), primary_key=True),
        sa.Column("load", sa.JSON, nullable=False),
        sa.Column("requests", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("generative_traffic")
    op.drop_table("generative_masks")
    op.drop_table("generative_bias_versions")
