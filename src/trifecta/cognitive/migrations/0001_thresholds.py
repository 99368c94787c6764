"""escalation thresholds per capsule

Revision ID: cognitive_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "cognitive_0001"
down_revision = None
branch_labels = ("cognitive",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cognitive_thresholds",
        sa.Column("capsule_id", sa.String(64), primary_key=True),
        sa.Column("aggregate", sa.String(16), nullable=False),
        sa.Column("window", sa.Integer, nullable=False),
        sa.Column("thresholds", sa.JSON, nullable=False),
        sa.Column("rates", sa.JSON, nullable=False),
        sa.Column("target_kind", sa.String(16), nullable=False),
        sa.Column("target_value", sa.Float, nullable=False),
        sa.Column("sample_size", sa.Integer, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_table("cognitive_thresholds")
