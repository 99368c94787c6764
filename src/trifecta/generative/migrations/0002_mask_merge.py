"""generative layer: an expert mask's merge plan (dropped experts merged into kept ones)

Revision ID: generative_0002
Revises: generative_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "generative_0002"
down_revision = "generative_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generative_masks") as batch:
        batch.add_column(sa.Column("merge", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generative_masks") as batch:
        batch.drop_column("merge")
