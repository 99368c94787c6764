"""escalation thresholds: the router's cut-offs (where each request starts)

Revision ID: cognitive_0002
Revises: cognitive_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "cognitive_0002"
down_revision = "cognitive_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("cognitive_thresholds") as batch:
        batch.add_column(sa.Column("router", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cognitive_thresholds") as batch:
        batch.drop_column("router")
