"""generative layer: expert placement versions (every MoE layer's nodes, shared by processes)

Revision ID: generative_0003
Revises: generative_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "generative_0003"
down_revision = "generative_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generative_placements",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("layers", sa.JSON, nullable=False),
        sa.Column("removed", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_table("generative_placements")
