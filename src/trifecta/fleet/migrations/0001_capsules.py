"""capsules table

Revision ID: fleet_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "fleet_0001"
down_revision = None
branch_labels = ("fleet",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capsules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False, index=True),
        sa.Column("domain", sa.String(64), nullable=False, index=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_table("capsules")
