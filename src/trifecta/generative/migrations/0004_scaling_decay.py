"""generative layer: when each capsule's traffic was last decayed (its half-life), and the node
count change a placement version made (why, load per node before and after)

Revision ID: generative_0004
Revises: generative_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "generative_0004"
down_revision = "generative_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generative_traffic") as batch:
        batch.add_column(sa.Column("decayed_at", sa.Float, nullable=True))
    with op.batch_alter_table("generative_placements") as batch:
        batch.add_column(sa.Column("scaling", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generative_placements") as batch:
        batch.drop_column("scaling")
    with op.batch_alter_table("generative_traffic") as batch:
        batch.drop_column("decayed_at")
